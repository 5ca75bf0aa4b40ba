/*
 * ctl_tls.c - convoyctl tls verify CERTFILE --host NAME [--CAfile FILE]
 * [--json]: the operator's check of a certificate that a recipient domain's
 * admin sends, made as an MTA-STS delivery to MX host NAME would make it
 * (RFC 8461 4.2: the chain reaches a trusted root, every certificate is in
 * date, and a DNS name of the certificate names the host, RFC 6125 6.4).
 *
 * The check is tls_check_cert_file() of the tls module: the trust store of
 * tls_ctx_client_new() (--CAfile, else smtp_tls_CAfile, else the system
 * store, as delivery chooses), wolfSSL's chain verification, the failure
 * classification and the name rule that the handshake uses
 * (tls_name_mismatch(): a wildcard only as the whole leftmost label, one
 * label deep; IDNs compared in A-label form).
 *
 * Output: a few "key: value" lines, or with --json exactly
 *   {"chain_valid": bool, "name_match": bool, "names": [...],
 *    "expired": bool, "error": str|null}
 * Exit: 0 when chain and name both hold, 1 otherwise (or when the check
 * cannot run: the reason goes to stderr, and to "error" with --json),
 * 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ctl.h"
#include "tls.h"

#define EXIT_USAGE 2

static void tls_usage(void)
{
    fprintf(stderr, "usage: convoyctl tls verify CERTFILE --host NAME [--CAfile FILE] [--json]\n");
}

/* An IDN must come as A-labels (xn--...), as certificates carry it. */
static bool ascii_only(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return false;
    return true;
}

static int print_json(const struct tls_cert_check *r, const char *error)
{
    json_t *names = json_array();
    for (size_t i = 0; r && i < r->n_names; i++)
        json_array_append_new(names, json_string(r->names[i]));
    json_t *o = json_object();
    json_object_set_new(o, "chain_valid", json_boolean(r && r->chain_valid));
    json_object_set_new(o, "name_match", json_boolean(r && r->name_match));
    json_object_set_new(o, "names", names);
    json_object_set_new(o, "expired", json_boolean(r && r->expired));
    json_object_set_new(o, "error", error && *error ? json_string(error) : json_null());
    char *s = json_dumps(o, JSON_PRESERVE_ORDER);
    printf("%s\n", s ? s : "{}");
    free(s);
    json_decref(o);
    return 0;
}

static int tls_verify(struct conf *c, int argc, char **argv)
{
    const char *file = NULL, *host = NULL, *ca = NULL;
    bool json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
            host = argv[++i];
        } else if (strcmp(argv[i], "--CAfile") == 0 && i + 1 < argc) {
            ca = argv[++i];
        } else if (argv[i][0] == '-' || file) {
            fprintf(stderr, "convoyctl: tls verify: unexpected \"%s\"\n", argv[i]);
            tls_usage();
            return EXIT_USAGE;
        } else {
            file = argv[i];
        }
    }
    if (!file || !host || !*host) {
        tls_usage();
        return EXIT_USAGE;
    }
    if (!ascii_only(host)) {
        fprintf(stderr,
                "convoyctl: tls verify: host \"%s\" is not in A-label form; give an IDN as "
                "certificates carry it (xn--..., as idn2 prints it)\n",
                host);
        return EXIT_USAGE;
    }
    if (!ca && c->smtp_tls_CAfile && c->smtp_tls_CAfile[0])
        ca = c->smtp_tls_CAfile;

    struct tls_cert_check *r = calloc(1, sizeof(*r));
    if (!r) {
        fprintf(stderr, "convoyctl: out of memory\n");
        return 1;
    }
    char why[512] = "";
    if (tls_check_cert_file(file, host, ca, r, why, sizeof(why)) != 0) {
        if (json)
            print_json(NULL, why);
        fprintf(stderr, "convoyctl: tls verify: %s\n", why);
        free(r);
        return 1;
    }
    bool ok = r->chain_valid && r->name_match;
    if (json) {
        print_json(r, r->error);
    } else {
        printf("host: %s\n", host);
        printf("chain: %s\n", r->chain_valid ? "valid" : "not valid");
        printf("name: %s\n", r->name_match ? "matches" : "does not match");
        printf("expired: %s\n", r->expired ? "yes" : "no");
        printf("names%s:", r->names_from_cn ? " (CN, no DNS SAN)" : "");
        for (size_t i = 0; i < r->n_names; i++)
            printf(" %s", r->names[i]);
        printf("\n");
        printf("%s%s\n", ok ? "ok: an MTA-STS delivery would accept this certificate" : "error: ",
               ok ? "" : r->error);
    }
    free(r);
    if (fflush(stdout) != 0)
        return 1;
    return ok ? 0 : 1;
}

int ctl_tls(struct conf *c, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "verify") == 0)
        return tls_verify(c, argc, argv);
    tls_usage();
    return EXIT_USAGE;
}
