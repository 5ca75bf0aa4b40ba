/*
 * ctl_dkim.c - convoyctl dkim: keys and checks for operators.
 *
 *   dkim keygen DOMAIN SELECTOR [--algorithm rsa|ed25519] [--bits N] --out KEYFILE
 *       Write a new private key (PEM, mode 0600; an existing file is not
 *       overwritten) and print the DNS record to publish:
 *       SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=rsa; p=..." with the
 *       text split into strings of at most 255 octets (RFC 1035 3.3.14).
 *   dkim verify [FILE|-] [--json]
 *       Verify every DKIM-Signature of a message (standard input without
 *       FILE or with -), looking the keys up in DNS with the daemon's
 *       resolver settings. One line per signature: "d=D s=S a=A: RESULT
 *       (reason)". Exit 0 when every signature passes, 1 otherwise (or
 *       when there is none), 2 usage.
 *
 * A message with bare LF line ends (as a file saved by a mail client often
 * is) is taken with CRLF, as it was on the wire.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "dkim.h"
#include "dns.h"
#include "ctl.h"
#include "settings.h"
#include "policy.h"

#define EXIT_USAGE 2
#define MAX_MESSAGE (64u * 1024 * 1024)

static void dkim_usage(void)
{
    fprintf(stderr, "usage: convoyctl dkim keygen DOMAIN SELECTOR [--algorithm rsa|ed25519] "
                    "[--bits N] --out KEYFILE\n"
                    "       convoyctl dkim verify [FILE|-] [--json]\n");
}

/* ---- keygen ------------------------------------------------------------------ */

static int write_key(const char *path, const struct buf *pem)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "convoyctl: dkim keygen: %s: %s%s\n", path, strerror(errno),
                errno == EEXIST ? " (a key is never overwritten; remove it first)" : "");
        return 1;
    }
    /* The umask may have taken bits away, never added any; make it 0600
     * whatever it was. */
    int rc = fchmod(fd, 0600);
    size_t off = 0;
    while (rc == 0 && off < pem->len) {
        ssize_t w = write(fd, pem->data + off, pem->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = -1;
        else
            off += (size_t)w;
    }
    if (rc == 0)
        rc = fsync(fd);
    if (close(fd) != 0)
        rc = -1;
    if (rc != 0) {
        fprintf(stderr, "convoyctl: dkim keygen: %s: %s\n", path, strerror(errno));
        unlink(path);
        return 1;
    }
    return 0;
}

static int cmd_keygen(int argc, char **argv)
{
    const char *words[2];
    int nw = 0;
    const char *out = NULL, *alg = "rsa";
    uint64_t bits = 2048;
    bool bits_set = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "--algorithm") == 0 && i + 1 < argc) {
            alg = argv[++i];
        } else if (strcmp(argv[i], "--bits") == 0 && i + 1 < argc) {
            if (str_to_u64(argv[++i], &bits) != 0 || bits > 100000) {
                fprintf(stderr, "convoyctl: dkim keygen: --bits: not a number\n");
                return EXIT_USAGE;
            }
            bits_set = true;
        } else if (argv[i][0] == '-' || nw == 2) {
            dkim_usage();
            return EXIT_USAGE;
        } else {
            words[nw++] = argv[i];
        }
    }
    if (nw != 2 || !out) {
        dkim_usage();
        return EXIT_USAGE;
    }
    enum dkim_alg a;
    if (strcasecmp(alg, "rsa") == 0) {
        a = DKIM_RSA_SHA256;
    } else if (strcasecmp(alg, "ed25519") == 0) {
        a = DKIM_ED25519_SHA256;
        if (bits_set) {
            fprintf(stderr, "convoyctl: dkim keygen: --bits applies to RSA keys only\n");
            return EXIT_USAGE;
        }
    } else {
        fprintf(stderr, "convoyctl: dkim keygen: --algorithm is rsa or ed25519\n");
        return EXIT_USAGE;
    }
    char domain[POLICY_NAME_MAX];
    if (policy_domain_normalize(words[0], domain) != 0 || !dns_name_valid(domain)) {
        fprintf(stderr, "convoyctl: dkim keygen: \"%s\" is not a domain name\n", words[0]);
        return EXIT_USAGE;
    }
    size_t dl = strlen(domain);
    if (dl > 0 && domain[dl - 1] == '.')
        domain[dl - 1] = '\0';
    char name[600];
    snprintf(name, sizeof(name), "%s._domainkey.%s", words[1], domain);
    if (!dns_name_valid(name) || strchr(words[1], '_') == words[1]) {
        fprintf(stderr, "convoyctl: dkim keygen: \"%s\" is not a selector\n", words[1]);
        return EXIT_USAGE;
    }
    struct buf err, pem, rec;
    buf_init(&err, 1024);
    buf_init(&pem, 64 * 1024);
    buf_init(&rec, 8192);
    struct dkim_key *k = dkim_key_generate(a, (unsigned)bits, &err);
    int rc = 1;
    if (!k)
        fprintf(stderr, "convoyctl: dkim keygen: %s\n", err.data ? err.data : "failed");
    else if (dkim_key_pem(k, &pem) != 0 || dkim_key_record(k, &rec) != 0)
        fprintf(stderr, "convoyctl: dkim keygen: cannot encode the key\n");
    else
        rc = write_key(out, &pem);
    if (rc == 0) {
        /* RFC 1035 3.3.14: one TXT record of character-strings of at most
         * 255 octets each; receivers join them (RFC 6376 3.6.2.2). */
        printf("%s. IN TXT", name);
        for (size_t i = 0; i < rec.len; i += 255) {
            size_t m = rec.len - i < 255 ? rec.len - i : 255;
            printf(" \"%.*s\"", (int)m, rec.data + i);
        }
        printf("\n");
        if (fflush(stdout) != 0)
            rc = 1;
    }
    if (pem.data)
        memset(pem.data, 0, pem.len);
    dkim_key_free(k);
    buf_free(&err);
    buf_free(&pem);
    buf_free(&rec);
    return rc;
}

/* ---- verify ------------------------------------------------------------------ */

struct lookup {
    bool done;
    enum dns_status status;
    const char *why;
    char *txt; /* the DKIM key record, NULL when there is none */
    size_t n_records;
};

static void txt_done(void *arg, const struct dns_result *r)
{
    struct lookup *l = arg;
    l->done = true;
    l->status = r->status;
    l->why = r->why;
    if (r->status != DNS_OK)
        return;
    /* RFC 6376 3.6.2.2: the strings of a record are joined; the record to
     * use is one that parses as a key record. Several records are
     * ambiguous: the first that starts like a key record is taken. */
    const char *only = NULL;
    for (size_t i = 0; i < r->n_txt; i++) {
        const char *t = r->txt[i].text;
        if (memchr(t, '\0', r->txt[i].len))
            continue;
        l->n_records++;
        only = t;
        if (!l->txt && strncmp(t, "v=DKIM1", 7) == 0)
            l->txt = strdup(t);
    }
    /* v= is optional (3.6.1): a single record without it is the key. */
    if (!l->txt && l->n_records == 1)
        l->txt = strdup(only);
}

/* Read a whole file or standard input, bounded. */
static int read_all(const char *path, struct buf *b)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "convoyctl: dkim verify: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char chunk[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (buf_append(b, chunk, n) != 0) {
            fprintf(stderr, "convoyctl: dkim verify: %s: larger than %u bytes\n", path,
                    MAX_MESSAGE);
            rc = 1;
            break;
        }
    }
    if (ferror(f)) {
        fprintf(stderr, "convoyctl: dkim verify: %s: read error\n", path);
        rc = 1;
    }
    if (f != stdin)
        fclose(f);
    return rc;
}

/* Bare LF to CRLF. */
static int to_crlf(const struct buf *in, struct buf *out)
{
    for (size_t i = 0; i < in->len; i++) {
        if (in->data[i] == '\n' && (i == 0 || in->data[i - 1] != '\r')) {
            if (buf_append(out, "\r\n", 2) != 0)
                return ERR_TOOBIG;
        } else if (buf_append(out, in->data + i, 1) != 0) {
            return ERR_TOOBIG;
        }
    }
    return 0;
}

static int cmd_verify(struct conf *c, int argc, char **argv)
{
    bool json = false;
    const char *path = "-";
    int nw = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (nw == 0 && (argv[i][0] != '-' || strcmp(argv[i], "-") == 0)) {
            path = argv[i];
            nw++;
        } else {
            dkim_usage();
            return EXIT_USAGE;
        }
    }
    struct buf raw, msg;
    buf_init(&raw, MAX_MESSAGE);
    buf_init(&msg, MAX_MESSAGE + MAX_MESSAGE / 2);
    if (read_all(path, &raw) != 0 || to_crlf(&raw, &msg) != 0) {
        buf_free(&raw);
        buf_free(&msg);
        return 1;
    }
    buf_free(&raw);
    const char *m = msg.data ? msg.data : "";
    struct dkim_headers h;
    if (dkim_headers_parse(m, msg.len, &h) != 0) {
        fprintf(stderr, "convoyctl: dkim verify: cannot parse the header\n");
        dkim_headers_free(&h);
        buf_free(&msg);
        return 1;
    }

    struct dns_options o;
    settings_dns_options(c, &o);
    o.cache_size = 0;
    uv_loop_t loop;
    struct dns *d = NULL;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "convoyctl: dkim verify: cannot start an event loop\n");
        dkim_headers_free(&h);
        buf_free(&msg);
        return 1;
    }
    int rc = dns_new(&loop, &o, &d);
    if (rc) {
        fprintf(stderr, "convoyctl: dkim verify: cannot start the resolver: %s\n", err_str(rc));
        uv_loop_close(&loop);
        dkim_headers_free(&h);
        buf_free(&msg);
        return 1;
    }
    json_t *arr = json_array();
    size_t n_sigs = 0, n_pass = 0;
    int64_t now = time_now_ms() / 1000;
    for (size_t i = 0; i < h.n; i++) {
        if (!view_eq_ci(h.v[i].name, "DKIM-Signature"))
            continue;
        n_sigs++;
        struct dkim_check chk;
        dkim_check_parse(m, &h, i, &chk);
        if (chk.query[0]) {
            struct lookup l = {0};
            if (!dns_name_valid(chk.query)) {
                dkim_check_verify(m, msg.len, &h, i, NULL, now, &chk);
                snprintf(chk.reason, sizeof(chk.reason), "%s is not a DNS name", chk.query);
                chk.result = DKIM_PERMERROR;
            } else if (dns_lookup(d, chk.query, DNS_T_TXT, txt_done, &l, NULL) != 0) {
                chk.result = DKIM_TEMPERROR;
                snprintf(chk.reason, sizeof(chk.reason), "cannot look up %s", chk.query);
            } else {
                while (!l.done && uv_run(&loop, UV_RUN_ONCE))
                    ;
                if (!l.done || l.status == DNS_TEMPFAIL) {
                    chk.result = DKIM_TEMPERROR;
                    snprintf(chk.reason, sizeof(chk.reason), "DNS lookup of %s failed: %s",
                             chk.query, l.why ? l.why : "no answer");
                } else {
                    dkim_check_verify(m, msg.len, &h, i, l.txt, now, &chk);
                }
            }
            free(l.txt);
        }
        if (chk.result == DKIM_PASS)
            n_pass++;
        if (json) {
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s}", "domain", chk.domain,
                                                 "selector", chk.selector, "algorithm", chk.alg,
                                                 "result", dkim_result_name(chk.result), "reason",
                                                 chk.reason));
        } else {
            printf("d=%s s=%s a=%s: %s (%s)\n", chk.domain, chk.selector, chk.alg,
                   dkim_result_name(chk.result), chk.reason);
        }
    }
    dns_free(d);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (json) {
        json_t *top = json_pack("{s:o, s:i, s:i}", "signatures", arr, "count", (json_int_t)n_sigs,
                                "pass", (json_int_t)n_pass);
        char *s = json_dumps(top, JSON_INDENT(2));
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(top);
    } else {
        json_decref(arr);
        if (n_sigs == 0)
            printf("no DKIM-Signature field\n");
    }
    dkim_headers_free(&h);
    buf_free(&msg);
    if (fflush(stdout) != 0)
        return 1;
    return n_sigs > 0 && n_pass == n_sigs ? 0 : 1;
}

int ctl_dkim(struct conf *c, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "keygen") == 0)
        return cmd_keygen(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "verify") == 0)
        return cmd_verify(c, argc, argv);
    dkim_usage();
    return EXIT_USAGE;
}
