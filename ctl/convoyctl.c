/*
 * convoyctl.c - Convoy's admin command: configuration, queue, DNS, version.
 *
 * It takes the daemon's -c FILE and -o name=value so it finds the same
 * queue and control socket. Exit codes: 0 ok, 1 failure, 2 usage, 3 daemon
 * not running.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl.h"

#define MAX_OVERRIDES 256

static void usage(FILE *f)
{
    fprintf(f, "usage: convoyctl [-c FILE] [-o name=value]... COMMAND [ARGS]\n"
               "\n"
               "commands:\n"
               "  config check                      check the configuration\n"
               "  config show [-n] [NAME...] [--json]\n"
               "                                    print parameters (-n: only non-defaults)\n"
               "  config doc                        print the parameter reference (Markdown)\n"
               "  queue list [FILTER] [--count] [--json]\n"
               "                                    list queued messages\n"
               "  queue summary [--by domain|reason] [FILTER] [--json]\n"
               "                                    messages by domain and age (qshape)\n"
               "  queue show ID [--headers|--body] [--json]\n"
               "                                    one message: envelope, recipients, text\n"
               "  queue retry|hold|release|delete|bounce (ID...|-|FILTER|--all --yes)\n"
               "        [--why TEXT] [--dry-run]    act on messages (needs convoyd)\n"
               "      FILTER: --state S --from RE --to RE --domain D --reason RE\n"
               "              --older DUR --younger DUR\n"
               "  dns mx|a|aaaa|txt NAME            what the resolver sees\n"
               "  dane check DOMAIN [--json]        DANE (RFC 7672) as delivery sees it\n"
               "  sts parse|show|list|forget|refresh|check ...\n"
               "                                    MTA-STS policies (convoyctl sts for details)\n"
               "  tls verify CERTFILE --host NAME [--CAfile FILE] [--json]\n"
               "                                    check a certificate as MTA-STS delivery would\n"
               "  tlsrpt record|show|list ...       TLS reporting (convoyctl tlsrpt for details)\n"
               "  dkim keygen DOMAIN SELECTOR [--algorithm rsa|ed25519] [--bits N] --out KEYFILE\n"
               "                                    new signing key and its DNS record\n"
               "  dkim verify [FILE|-] [--json]     check a message's DKIM signatures\n"
               "  status [--json]                   is convoyd running, and how\n"
               "  reload                            reload convoyd's configuration\n"
               "  pause [--domain D] [--for DUR] --reason TEXT\n"
               "                                    stop new delivery attempts\n"
               "  resume [--domain D]               deliver again\n"
               "  version                           print the version\n");
}

static const char *g_conf_path;

/* ---- config ----------------------------------------------------------- */

static json_t *value_json(const struct conf *c, const struct conf_param_info *p)
{
    const void *field = (const char *)c + p->offset;
    switch (p->type) {
    case CONF_BOOL:
        return json_boolean(*(const bool *)field);
    case CONF_INT:
    case CONF_TIME:
        return json_integer((json_int_t) * (const int64_t *)field);
    case CONF_SIZE:
        return json_integer((json_int_t) * (const uint64_t *)field);
    case CONF_LIST: {
        const struct conf_list *l = field;
        json_t *a = json_array();
        for (size_t i = 0; i < l->n; i++)
            json_array_append_new(a, json_string(l->v[i]));
        return a;
    }
    case CONF_STR:
    case CONF_ENUM:
        return json_string(*(const char *const *)field);
    }
    return json_null();
}

static int config_show(struct conf *c, int argc, char **argv)
{
    bool only_set = false, as_json = false;
    const struct conf_param_info *table = conf_params();
    size_t order[CONF_NPARAMS];
    size_t n = 0;
    bool named = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0) {
            only_set = true;
        } else if (strcmp(argv[i], "--json") == 0) {
            as_json = true;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "convoyctl: config show: unknown option %s\n", argv[i]);
            return EXIT_USAGE;
        } else {
            const struct conf_param_info *p = conf_param_find(argv[i]);
            if (!p) {
                fprintf(stderr, "convoyctl: unknown parameter \"%s\"\n", argv[i]);
                return 1;
            }
            if (n < CONF_NPARAMS)
                order[n++] = (size_t)(p - table);
            named = true;
        }
    }
    /* Named parameters print in the order asked, as postconf does. */
    if (!named)
        for (n = 0; n < CONF_NPARAMS; n++)
            order[n] = n;
    json_t *obj = as_json ? json_object() : NULL;
    struct buf line;
    buf_init(&line, 1 << 20);
    for (size_t k = 0; k < n; k++) {
        size_t i = order[k];
        if (only_set && !c->is_set[i])
            continue;
        if (obj) {
            json_object_set_new(obj, table[i].name, value_json(c, &table[i]));
            continue;
        }
        buf_reset(&line);
        conf_value_text(c, (enum conf_param_id)i, &line);
        printf("%s = %s\n", table[i].name, line.data ? line.data : "");
    }
    buf_free(&line);
    if (obj) {
        char *s = json_dumps(obj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", s ? s : "{}");
        free(s);
        json_decref(obj);
    }
    return 0;
}

static int cmd_config(struct conf *c, int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "convoyctl: config: expected check, show or doc\n");
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "check") == 0) {
        if (argc != 2) {
            fprintf(stderr, "convoyctl: config check takes no arguments\n");
            return EXIT_USAGE;
        }
        printf("%s: configuration OK\n", g_conf_path ? g_conf_path : "built-in defaults");
        return 0;
    }
    if (strcmp(argv[1], "show") == 0)
        return config_show(c, argc, argv);
    if (strcmp(argv[1], "doc") == 0) {
        struct buf out;
        buf_init(&out, 1 << 20);
        int rc = conf_doc_markdown(&out);
        if (rc == 0)
            fwrite(out.data, 1, out.len, stdout);
        buf_free(&out);
        return rc ? 1 : 0;
    }
    fprintf(stderr, "convoyctl: config: unknown subcommand \"%s\"\n", argv[1]);
    return EXIT_USAGE;
}

/* ---- dispatch --------------------------------------------------------- */

static const struct {
    const char *name;
    int (*run)(struct conf *c, int argc, char **argv);
} commands[] = {
    {"config", cmd_config}, {"queue", ctl_queue}, {"dns", ctl_dns},       {"status", ctl_status},
    {"reload", ctl_reload}, {"sts", ctl_sts},     {"dane", ctl_dane},     {"pause", ctl_pause},
    {"resume", ctl_resume}, {"tls", ctl_tls},     {"tlsrpt", ctl_tlsrpt}, {"dkim", ctl_dkim},
};

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *overrides[MAX_OVERRIDES];
    size_t n_overrides = 0;
    bool have_conf = false;
    int opt;
    /* "+": stop at the command so its own options are left to it. */
    while ((opt = getopt_long(argc, argv, "+c:o:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            g_conf_path = optarg;
            have_conf = true;
            break;
        case 'o':
            if (n_overrides == MAX_OVERRIDES) {
                fprintf(stderr, "convoyctl: too many -o options\n");
                return EXIT_USAGE;
            }
            overrides[n_overrides++] = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("convoyctl %s\n", CONVOY_VERSION);
            return 0;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    char **cargv = argv + optind;
    int cargc = argc - optind;
    if (strcmp(cargv[0], "version") == 0) {
        printf("convoyctl %s\n", CONVOY_VERSION);
        return 0;
    }
    if (strcmp(cargv[0], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (!have_conf && access("/etc/convoy/convoy.conf", F_OK) == 0)
        g_conf_path = "/etc/convoy/convoy.conf";
    /* As in convoyd: libuv writes to sockets without MSG_NOSIGNAL, so a
     * peer that closes while we write (an MX host in "sts check", a policy
     * host, the daemon's control socket) must give EPIPE, not kill us. A
     * closed standard output shows as a failed fflush (exit 1). */
    signal(SIGPIPE, SIG_IGN);

    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(cargv[0], commands[i].name) != 0)
            continue;
        struct buf errors;
        buf_init(&errors, 64 * 1024);
        struct conf *c = conf_load(g_conf_path, overrides, n_overrides, &errors);
        if (!c) {
            fprintf(stderr, "%s", errors.data ? errors.data : "configuration error\n");
            buf_free(&errors);
            return 1;
        }
        buf_free(&errors);
        log_setup(c->syslog_name, c->syslog_facility, LOG_TO_STDERR, false);
        /* Run by root: act as the state directory's owner (issue 17). */
        char why[512] = "";
        if (priv_become_dir_owner(c->mail_owner, c->queue_directory, why, sizeof(why)) != 0) {
            fprintf(stderr, "convoyctl: %s\n", why);
            conf_unref(c);
            return 1;
        }
        int rc = commands[i].run(c, cargc, cargv);
        conf_unref(c);
        return rc;
    }
    fprintf(stderr, "convoyctl: unknown command \"%s\"\n", cargv[0]);
    usage(stderr);
    return EXIT_USAGE;
}
