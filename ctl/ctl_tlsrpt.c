/*
 * ctl_tlsrpt.c - convoyctl tlsrpt: TLS reporting (RFC 8460) for operators.
 *
 *   tlsrpt record [TXT ...] [--json]      check a _smtp._tls TXT RRset
 *   tlsrpt show DOMAIN [--date D] [--json]  the report of one policy domain
 *   tlsrpt list [--date D] [--json]       policy domains with their counts
 *
 * record: each argument is one TXT record of the RRset ("-" reads one
 * record per line from standard input); the same parser as discovery in
 * the daemon. Exit 0 when the RRset yields a usable reporting policy, 1
 * otherwise. JSON: {"valid": bool, "rua": [...], "error": str|null}.
 *
 * show and list read <queue_directory>/tlsrpt.lmdb, with or without the
 * daemon (LMDB lets readers in while convoyd writes). show prints the
 * report exactly as it would be sent for that UTC day (default: today so
 * far), with the report-id the next report of that day would get.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl.h"
#include "settings.h"
#include "policy.h"

#define EXIT_USAGE 2
#define MAX_RECORDS 256
#define LINE_MAX_LEN 65536

static void tlsrpt_usage(void)
{
    fprintf(stderr, "usage: convoyctl tlsrpt record [TXT ...|-] [--json]\n"
                    "       convoyctl tlsrpt show DOMAIN [--date YYYY-MM-DD] [--json]\n"
                    "       convoyctl tlsrpt list [--date YYYY-MM-DD] [--json]\n");
}

static void print_json(json_t *o)
{
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", s ? s : "null");
    free(s);
    json_decref(o);
}

/* ---- record ---------------------------------------------------------------- */

struct records {
    char *v[MAX_RECORDS];
    size_t len[MAX_RECORDS];
    size_t n;
};

static int add_record(struct records *r, const char *s, size_t n)
{
    if (r->n == MAX_RECORDS) {
        fprintf(stderr, "convoyctl: tlsrpt record: more than %d records\n", MAX_RECORDS);
        return -1;
    }
    r->v[r->n] = strndup(s, n);
    if (!r->v[r->n])
        return -1;
    r->len[r->n++] = n;
    return 0;
}

static int read_stdin(struct records *r)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (n > LINE_MAX_LEN) {
            fprintf(stderr, "convoyctl: tlsrpt record: line too long\n");
            rc = -1;
        } else {
            rc = add_record(r, line, (size_t)n);
        }
    }
    free(line);
    return rc;
}

static int tlsrpt_record_cmd(int argc, char **argv)
{
    bool as_json = false;
    struct records r = {.n = 0};
    int rc = 0;
    for (int i = 2; i < argc && rc == 0; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (strcmp(argv[i], "-") == 0)
            rc = read_stdin(&r);
        else if (strncmp(argv[i], "--", 2) == 0) {
            tlsrpt_usage();
            rc = EXIT_USAGE;
        } else
            rc = add_record(&r, argv[i], strlen(argv[i]));
    }
    if (rc != 0) {
        for (size_t i = 0; i < r.n; i++)
            free(r.v[i]);
        return rc == EXIT_USAGE ? EXIT_USAGE : 1;
    }
    struct tlsrpt_record *rec = malloc(sizeof(*rec));
    if (!rec)
        return 1;
    char why[256] = "";
    int pr = tlsrpt_txt_select((const char *const *)r.v, r.len, r.n, rec, why, sizeof(why));
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "valid", json_boolean(pr == 0));
        json_t *a = json_array();
        for (size_t i = 0; pr == 0 && i < rec->n_rua; i++)
            json_array_append_new(a, json_string(rec->rua[i]));
        json_object_set_new(o, "rua", a);
        json_object_set_new(o, "error", pr == 0 ? json_null() : json_string(why));
        print_json(o);
    } else if (pr == 0) {
        printf("usable reporting policy\n");
        for (size_t i = 0; i < rec->n_rua; i++)
            printf("rua: %s\n", rec->rua[i]);
        if (rec->n_ignored)
            printf("ignored: %zu URI%s of other schemes\n", rec->n_ignored,
                   rec->n_ignored == 1 ? "" : "s");
    } else {
        printf("no usable reporting policy: %s\n", why);
    }
    free(rec);
    for (size_t i = 0; i < r.n; i++)
        free(r.v[i]);
    return pr == 0 ? 0 : 1;
}

/* ---- show, list ------------------------------------------------------------- */

static int open_store(const struct conf *c, struct tlsrpt_store **out)
{
    char path[4096], why[512] = "";
    snprintf(path, sizeof(path), "%s/%s", c->queue_directory, TLSRPT_STORE_FILE);
    *out = NULL;
    if (access(path, F_OK) != 0)
        return ERR_NOTFOUND;
    int rc = tlsrpt_store_open(path, true, out, why, sizeof(why));
    if (rc != 0)
        fprintf(stderr, "convoyctl: tlsrpt store: %s\n", why[0] ? why : err_str(rc));
    return rc;
}

/* Parse --date D (or take today); day_out gets the canonical form. */
static int date_arg(const char *arg, char day_out[TLSRPT_DAY_SIZE])
{
    int64_t start;
    if (!arg) {
        tlsrpt_day_of(time_now_ms() / 1000, day_out);
        return 0;
    }
    if (strcmp(arg, "today") == 0) {
        tlsrpt_day_of(time_now_ms() / 1000, day_out);
        return 0;
    }
    if (strcmp(arg, "yesterday") == 0) {
        tlsrpt_day_of(time_now_ms() / 1000 - 86400, day_out);
        return 0;
    }
    if (tlsrpt_day_parse(arg, &start) != 0) {
        fprintf(stderr, "convoyctl: tlsrpt: invalid date \"%s\" (YYYY-MM-DD)\n", arg);
        return EXIT_USAGE;
    }
    str_copy(day_out, arg, TLSRPT_DAY_SIZE);
    return 0;
}

struct find_ctx {
    const char *domain;
    struct tlsrpt_summary sum;
    bool found;
};

static int find_cb(void *arg, const struct tlsrpt_summary *sum)
{
    struct find_ctx *f = arg;
    if (strcmp(sum->domain, f->domain) != 0)
        return 0;
    f->sum = *sum;
    f->found = true;
    return 1;
}

static void print_report_text(json_t *r, const struct tlsrpt_summary *sum)
{
    json_t *range = json_object_get(r, "date-range");
    printf("report-id:    %s\n", json_string_value(json_object_get(r, "report-id")));
    printf("organization: %s\n", json_string_value(json_object_get(r, "organization-name")));
    printf("contact:      %s\n", json_string_value(json_object_get(r, "contact-info")));
    printf("range:        %s to %s\n", json_string_value(json_object_get(range, "start-datetime")),
           json_string_value(json_object_get(range, "end-datetime")));
    printf("reports made: %u\n", sum->reports);
    if (sum->dropped)
        printf("dropped:      %llu (bounds reached)\n", (unsigned long long)sum->dropped);
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(r, "policies"), i, p)
    {
        json_t *pol = json_object_get(p, "policy");
        json_t *s = json_object_get(p, "summary");
        printf("\npolicy %s for %s: %lld successful, %lld failed\n",
               json_string_value(json_object_get(pol, "policy-type")),
               json_string_value(json_object_get(pol, "policy-domain")),
               (long long)json_integer_value(json_object_get(s, "total-successful-session-count")),
               (long long)json_integer_value(json_object_get(s, "total-failure-session-count")));
        size_t j;
        json_t *v;
        json_array_foreach(json_object_get(pol, "policy-string"), j, v)
        {
            printf("  | %s\n", json_string_value(v));
        }
        json_array_foreach(json_object_get(p, "failure-details"), j, v)
        {
            const char *mx = json_string_value(json_object_get(v, "receiving-mx-hostname"));
            const char *rip = json_string_value(json_object_get(v, "receiving-ip"));
            const char *code = json_string_value(json_object_get(v, "failure-reason-code"));
            printf("  %6lld  %-26s mx=%s[%s]%s%s\n",
                   (long long)json_integer_value(json_object_get(v, "failed-session-count")),
                   json_string_value(json_object_get(v, "result-type")), mx ? mx : "-",
                   rip ? rip : "-", code ? " " : "", code ? code : "");
        }
    }
}

static int tlsrpt_show(const struct conf *c, int argc, char **argv)
{
    const char *dom = NULL, *date = NULL;
    bool as_json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (strcmp(argv[i], "--date") == 0 && i + 1 < argc)
            date = argv[++i];
        else if (!dom && argv[i][0] != '-')
            dom = argv[i];
        else {
            tlsrpt_usage();
            return EXIT_USAGE;
        }
    }
    char norm[POLICY_NAME_MAX], day[TLSRPT_DAY_SIZE];
    if (!dom) {
        tlsrpt_usage();
        return EXIT_USAGE;
    }
    if (policy_domain_normalize(dom, norm) != 0) {
        fprintf(stderr, "convoyctl: tlsrpt show: invalid domain \"%s\"\n", dom);
        return EXIT_USAGE;
    }
    int rc = date_arg(date, day);
    if (rc != 0)
        return rc;
    struct tlsrpt_store *s;
    rc = open_store(c, &s);
    struct find_ctx f = {.domain = norm, .found = false};
    if (rc == 0)
        tlsrpt_store_each(s, day, find_cb, &f);
    else if (rc != ERR_NOTFOUND)
        return 1;
    if (!f.found) {
        tlsrpt_store_close(s);
        fprintf(stderr, "convoyctl: tlsrpt show: nothing recorded for %s on %s\n", norm, day);
        return 1;
    }
    struct settings_tlsrpt_names names;
    settings_tlsrpt_names(c, &names);
    struct tlsrpt_report_info info = {
        .organization_name = names.organization,
        .contact_info = names.contact,
        .submitter = names.submitter,
    };
    /* Today is reported so far; a past day whole. */
    char today[TLSRPT_DAY_SIZE];
    int64_t now = time_now_ms() / 1000;
    tlsrpt_day_of(now, today);
    int64_t end = strcmp(day, today) == 0 ? now : 0;
    struct buf out;
    buf_init(&out, 64 * 1024 * 1024);
    rc = tlsrpt_report_json(s, day, norm, &info, f.sum.reports, end, true, &out);
    tlsrpt_store_close(s);
    if (rc != 0) {
        fprintf(stderr, "convoyctl: tlsrpt show: %s\n", err_str(rc));
        buf_free(&out);
        return 1;
    }
    if (as_json) {
        printf("%s\n", out.data);
    } else {
        json_error_t e;
        json_t *r = json_loadb(out.data, out.len, 0, &e);
        if (r)
            print_report_text(r, &f.sum);
        json_decref(r);
    }
    buf_free(&out);
    return 0;
}

struct list_ctx {
    json_t *arr;
    size_t n;
};

static int list_cb(void *arg, const struct tlsrpt_summary *sum)
{
    struct list_ctx *l = arg;
    l->n++;
    if (l->arr) {
        json_t *o = json_object();
        json_object_set_new(o, "day", json_string(sum->day));
        json_object_set_new(o, "domain", json_string(sum->domain));
        json_object_set_new(o, "successful", json_integer((json_int_t)sum->successful));
        json_object_set_new(o, "failed", json_integer((json_int_t)sum->failed));
        json_object_set_new(o, "policies", json_integer((json_int_t)sum->n_policies));
        json_object_set_new(o, "dropped", json_integer((json_int_t)sum->dropped));
        json_object_set_new(o, "reports", json_integer((json_int_t)sum->reports));
        json_array_append_new(l->arr, o);
        return 0;
    }
    if (l->n == 1)
        printf("%-10s  %-40s %10s %10s %8s\n", "day", "policy domain", "successful", "failed",
               "reports");
    printf("%-10s  %-40s %10llu %10llu %8u\n", sum->day, sum->domain,
           (unsigned long long)sum->successful, (unsigned long long)sum->failed, sum->reports);
    return 0;
}

static int tlsrpt_list(const struct conf *c, int argc, char **argv)
{
    const char *date = NULL;
    bool as_json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (strcmp(argv[i], "--date") == 0 && i + 1 < argc)
            date = argv[++i];
        else {
            tlsrpt_usage();
            return EXIT_USAGE;
        }
    }
    char day[TLSRPT_DAY_SIZE];
    if (date) {
        int rc = date_arg(date, day);
        if (rc != 0)
            return rc;
    }
    struct list_ctx l = {.arr = as_json ? json_array() : NULL, .n = 0};
    struct tlsrpt_store *s;
    int rc = open_store(c, &s);
    if (rc == 0) {
        tlsrpt_store_each(s, date ? day : NULL, list_cb, &l);
        tlsrpt_store_close(s);
    } else if (rc != ERR_NOTFOUND) {
        json_decref(l.arr);
        return 1;
    }
    if (l.arr)
        print_json(l.arr);
    else if (l.n == 0)
        printf("nothing recorded\n");
    return 0;
}

int ctl_tlsrpt(struct conf *c, int argc, char **argv)
{
    if (argc < 2) {
        tlsrpt_usage();
        return EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "record") == 0)
        return tlsrpt_record_cmd(argc, argv);
    if (strcmp(sub, "show") == 0)
        return tlsrpt_show(c, argc, argv);
    if (strcmp(sub, "list") == 0)
        return tlsrpt_list(c, argc, argv);
    fprintf(stderr, "convoyctl: tlsrpt: unknown subcommand \"%s\"\n", sub);
    tlsrpt_usage();
    return EXIT_USAGE;
}
