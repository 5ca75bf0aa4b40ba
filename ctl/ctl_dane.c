/*
 * ctl_dane.c - convoyctl dane check DOMAIN [--json]: DANE for SMTP (RFC
 * 7672) from the sender's vantage point, with the resolver delivery uses
 * (smtp_dns_support_level, dns_servers, dns_validating_servers):
 *
 *   - the MX lookup and whether it is DNSSEC-secure (2.2.1);
 *   - per MX host: whether its address records are secure (2.2.2), its TLSA
 *     RRset (at the CNAME-expanded name first, 2.2.3) with its status
 *     (secure, insecure, nodata, nxdomain, bogus, fail) and which records
 *     are usable (3.1.3: DANE-TA and DANE-EE only);
 *   - then a real session per host with the SMTP client delivery uses:
 *     STARTTLS with SNI = the MX host name, no PKIX verification, and the
 *     presented chain matched against the records (tls_dane_verify()).
 *
 * A host passes when DANE applies to it and the session met it: a record
 * matched (usable records), or TLS was made (none usable). Exit 0 when
 * every host passes, 1 otherwise, EXIT_USAGE for bad arguments.
 *
 * ctl_dane_applies() is the TLSA half, for "sts check" to say where DANE
 * takes precedence over the MTA-STS policy.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ctl.h"
#include "dns.h"
#include "smtp.h"
#include "tls.h"

#define MAX_RECS 32

struct tlsa_state {
    bool done;
    enum dns_tlsa_status st;
    char name[300];
    char why[128];
    size_t n;
    struct {
        uint8_t usage, selector, mtype;
        uint8_t *data;
        size_t len;
    } r[MAX_RECS];
};

static void tlsa_cb(void *arg, const struct dns_result *r)
{
    struct tlsa_state *t = arg;
    t->done = true;
    t->st = dns_tlsa_classify(r);
    str_copy(t->name, r->name ? r->name : "", sizeof(t->name));
    str_copy(t->why, r->why ? r->why : dns_status_name(r->status), sizeof(t->why));
    for (size_t i = 0; i < r->n_tlsa && t->n < MAX_RECS; i++) {
        uint8_t *d = malloc(r->tlsa[i].len ? r->tlsa[i].len : 1);
        if (!d)
            break;
        if (r->tlsa[i].len)
            memcpy(d, r->tlsa[i].data, r->tlsa[i].len);
        t->r[t->n].usage = r->tlsa[i].usage;
        t->r[t->n].selector = r->tlsa[i].selector;
        t->r[t->n].mtype = r->tlsa[i].mtype;
        t->r[t->n].data = d;
        t->r[t->n].len = r->tlsa[i].len;
        t->n++;
    }
}

static void tlsa_clear(struct tlsa_state *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->r[i].data);
    memset(t, 0, sizeof(*t));
}

static void run_until(uv_loop_t *loop, const bool *done)
{
    while (!*done)
        uv_run(loop, UV_RUN_ONCE);
}

/* The TLSA RRset of a host: at the canonical name first, then the name. */
static void tlsa_get(uv_loop_t *loop, struct dns *dns, uint16_t port, const char *host,
                     const char *canonical, struct tlsa_state *t)
{
    memset(t, 0, sizeof(*t));
    if (canonical && canonical[0]) {
        if (dns_tlsa_lookup(dns, canonical, port, tlsa_cb, t, NULL) == 0) {
            run_until(loop, &t->done);
            if (t->st == DNS_TLSA_SECURE || t->st == DNS_TLSA_BOGUS || t->st == DNS_TLSA_FAIL)
                return;
        }
        tlsa_clear(t);
    }
    if (dns_tlsa_lookup(dns, host, port, tlsa_cb, t, NULL) != 0) {
        t->st = DNS_TLSA_FAIL;
        str_copy(t->why, "cannot start the lookup", sizeof(t->why));
        return;
    }
    run_until(loop, &t->done);
}

static size_t tlsa_view(const struct tlsa_state *t, struct tls_tlsa *out)
{
    for (size_t i = 0; i < t->n; i++)
        out[i] = (struct tls_tlsa){t->r[i].usage, t->r[i].selector, t->r[i].mtype, t->r[i].data,
                                   t->r[i].len};
    return t->n;
}

bool ctl_dane_applies(uv_loop_t *loop, struct dns *dns, uint16_t port, bool mx_secure,
                      bool host_secure, const char *host, const char *canonical, char *why,
                      size_t size)
{
    if (!dns_dnssec_trusted(dns)) {
        snprintf(why, size, "DNSSEC status not trusted (smtp_dns_support_level)");
        return false;
    }
    if (!mx_secure) {
        snprintf(why, size, "MX RRset not DNSSEC-secure");
        return false;
    }
    if (!host_secure) {
        snprintf(why, size, "address records not DNSSEC-secure");
        return false;
    }
    struct tlsa_state *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(why, size, "out of memory");
        return false;
    }
    tlsa_get(loop, dns, port, host, canonical, t);
    bool applies = t->st == DNS_TLSA_SECURE || t->st == DNS_TLSA_BOGUS || t->st == DNS_TLSA_FAIL;
    if (t->st == DNS_TLSA_SECURE) {
        struct tls_tlsa v[MAX_RECS];
        size_t n = tlsa_view(t, v);
        snprintf(why, size, "TLSA secure at %s, %zu of %zu records usable", t->name,
                 tls_dane_usable_count(v, n), n);
    } else {
        snprintf(why, size, "TLSA %s%s%s", dns_tlsa_status_name(t->st), applies ? ": " : "",
                 applies ? t->why : "");
    }
    tlsa_clear(t);
    free(t);
    return applies;
}

/* ---- the session ------------------------------------------------------------------------ */

struct probe {
    const char *host;
    const char *domain;
    const char *canonical;
    const struct tlsa_state *t;
    bool done, tls, ready;
    bool matched;
    struct tls_dane_result res;
    struct tls_facts facts;
    char error[512];
};

static bool probe_tls_check(struct smtp_client *c, const struct tls_facts *f,
                            struct smtp_outcome *out, void *arg)
{
    (void)out;
    struct probe *p = arg;
    p->tls = true;
    p->facts = *f;
    struct tls_tlsa v[MAX_RECS];
    size_t n = tlsa_view(p->t, v);
    if (tls_dane_usable_count(v, n) == 0)
        return true; /* 2.2: TLS without authentication */
    struct tls_der chain[16];
    size_t nc = smtp_client_peer_chain(c, chain, 16);
    const char *names[3];
    size_t nn = 0;
    names[nn++] = p->host;
    if (p->canonical && p->canonical[0])
        names[nn++] = p->canonical;
    names[nn++] = p->domain;
    tls_dane_verify(v, n, chain, nc, names, nn, &p->res);
    p->matched = true;
    return true;
}

static void probe_event(struct smtp_client *c, enum smtp_event ev, void *arg)
{
    struct probe *p = arg;
    if (ev == SMTP_EV_READY) {
        p->ready = true;
        smtp_client_quit(c);
        return;
    }
    if (ev != SMTP_EV_CLOSED)
        return;
    const struct smtp_outcome *r = smtp_client_result(c);
    if (!p->ready)
        str_copy(p->error, r->text, sizeof(p->error));
    smtp_client_free(c);
    p->done = true;
}

static void probe_run(uv_loop_t *loop, const struct conf *c, struct tls_ctx *ctx,
                      const struct dns_addr *a, struct probe *p)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    uint16_t port = (uint16_t)c->smtp_destination_port;
    if (a->family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        memcpy(&s4->sin_addr, a->bytes, 4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        memcpy(&s6->sin6_addr, a->bytes, 16);
    }
    char helo[256];
    settings_helo_name(c, helo, sizeof(helo));
    struct smtp_client_opts o = {
        .helo_name = helo,
        .host = p->host,
        .addr = (const struct sockaddr *)&ss,
        .tls = SMTP_TLS_ENCRYPT, /* SNI = the MX host; no PKIX verification */
        .verify_host = p->host,
        .tls_ctx = ctx,
        .tls_check = probe_tls_check,
        .cb = probe_event,
        .arg = p,
    };
    settings_smtp_timeouts(c, &o.timeouts);
    int err = 0;
    if (!smtp_client_new(loop, &o, &err)) {
        snprintf(p->error, sizeof(p->error), "cannot start a session: %s", err_str(err));
        return;
    }
    run_until(loop, &p->done);
}

/* ---- dane check ------------------------------------------------------------------------- */

struct mx_state {
    bool done;
    enum dns_status st;
    char why[128];
    bool dnssec, secure;
    size_t n;
    struct {
        char name[DNS_NAME_MAX];
        char canonical[DNS_NAME_MAX];
        uint16_t pref;
        enum dns_status st;
        bool secure, have_addr;
        struct dns_addr addr;
    } h[DNS_MAX_MX_HOSTS];
};

static void mx_cb(void *arg, const struct dns_mx_result *r)
{
    struct mx_state *m = arg;
    m->done = true;
    m->st = r->status;
    str_copy(m->why, r->why ? r->why : dns_status_name(r->status), sizeof(m->why));
    m->dnssec = r->dnssec;
    m->secure = r->secure;
    for (size_t i = 0; i < r->n_hosts && i < DNS_MAX_MX_HOSTS; i++) {
        str_copy(m->h[i].name, r->hosts[i].name, sizeof(m->h[i].name));
        str_copy(m->h[i].canonical, r->hosts[i].canonical ? r->hosts[i].canonical : "",
                 sizeof(m->h[i].canonical));
        m->h[i].pref = r->hosts[i].pref;
        m->h[i].st = r->hosts[i].status;
        m->h[i].secure = r->hosts[i].secure;
        m->h[i].have_addr = r->hosts[i].status == DNS_OK && r->hosts[i].n_addr > 0;
        if (m->h[i].have_addr)
            m->h[i].addr = r->hosts[i].addr[0];
        m->n = i + 1;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: convoyctl dane check DOMAIN [--json]\n");
}

static json_t *jstr_or_null(const char *s)
{
    return s && s[0] ? json_string(s) : json_null();
}

static int dane_check(const struct conf *c, const char *domain, bool as_json)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct dns_options dno;
    settings_dns_options(c, &dno);
    struct dns *dns = NULL;
    int rc = dns_new(&loop, &dno, &dns);
    if (rc != 0) {
        fprintf(stderr, "convoyctl: DNS resolver: %s\n", err_str(rc));
        uv_loop_close(&loop);
        return 1;
    }
    char why[256] = "";
    const char *ca = c->smtp_tls_CAfile && c->smtp_tls_CAfile[0] ? c->smtp_tls_CAfile : NULL;
    struct tls_ctx *ctx = tls_ctx_client_new(ca, why, sizeof(why));
    if (!ctx)
        fprintf(stderr, "convoyctl: TLS client context: %s\n", why);
    struct mx_state *m = calloc(1, sizeof(*m));
    struct tlsa_state *t = calloc(1, sizeof(*t));
    bool all_ok = m && t;
    json_t *jh = json_array();
    if (m && dns_mx_resolve(dns, domain, mx_cb, m, NULL) == 0)
        run_until(&loop, &m->done);
    else if (m) {
        m->st = DNS_TEMPFAIL;
        str_copy(m->why, "cannot start the lookup", sizeof(m->why));
    }
    bool mx_ok = m && (m->st == DNS_OK || m->st == DNS_IMPLICIT_MX);
    if (m && !as_json) {
        if (!m->dnssec)
            printf("dnssec: FAIL: DNSSEC status not trusted (smtp_dns_support_level = dnssec, "
                   "dns_validating_servers)\n");
        if (!mx_ok)
            printf("MX: FAIL: %s (%s)\n", dns_status_name(m->st), m->why);
        else if (m->secure)
            printf("MX: secure\n");
        else
            printf("MX: FAIL: insecure (RFC 7672 2.2.1: no DANE for the domain)\n");
    }
    if (!mx_ok || !m->secure)
        all_ok = false;
    uint16_t port = (uint16_t)c->smtp_destination_port;
    for (size_t i = 0; mx_ok && t && i < m->n; i++) {
        const char *host = m->h[i].name;
        json_t *o = json_object();
        json_object_set_new(o, "host", json_string(host));
        json_object_set_new(o, "preference", json_integer(m->h[i].pref));
        json_object_set_new(o, "canonical", jstr_or_null(m->h[i].canonical));
        json_object_set_new(o, "address_secure", json_boolean(m->h[i].secure));
        char ip[64] = "";
        if (m->h[i].have_addr)
            dns_addr_format(&m->h[i].addr, ip, sizeof(ip));
        json_object_set_new(o, "address", jstr_or_null(ip));
        bool ok = false;
        const char *dane = "none";
        const char *result = NULL;
        char matched[32] = "", err[600] = "";
        if (!as_json)
            printf("%s (preference %u) [%s]: addresses %s\n", host, m->h[i].pref, ip[0] ? ip : "-",
                   m->h[i].secure ? "secure" : "not secure");
        tlsa_clear(t);
        tlsa_get(&loop, dns, port, host, m->h[i].canonical, t);
        struct tls_tlsa v[MAX_RECS];
        size_t n = tlsa_view(t, v);
        size_t usable = tls_dane_usable_count(v, n);
        json_object_set_new(o, "tlsa_name", jstr_or_null(t->name));
        json_object_set_new(o, "tlsa", json_string(dns_tlsa_status_name(t->st)));
        json_t *jr = json_array();
        if (!as_json)
            printf("%s: TLSA %s, %zu of %zu usable (%s)\n", host, dns_tlsa_status_name(t->st),
                   usable, n, t->name[0] ? t->name : t->why);
        for (size_t k = 0; k < n; k++) {
            char hx[2 * 1024 + 1];
            hex_encode(v[k].data, v[k].len, hx, sizeof(hx));
            bool u = tls_tlsa_usable(&v[k]);
            json_t *r = json_object();
            json_object_set_new(r, "usage", json_integer(v[k].usage));
            json_object_set_new(r, "selector", json_integer(v[k].selector));
            json_object_set_new(r, "mtype", json_integer(v[k].mtype));
            json_object_set_new(r, "data", json_string(hx));
            json_object_set_new(r, "usable", json_boolean(u));
            json_array_append_new(jr, r);
            if (!as_json)
                printf("  %u %u %u %.64s%s: %s\n", v[k].usage, v[k].selector, v[k].mtype, hx,
                       strlen(hx) > 64 ? "..." : "", u ? "usable" : "unusable");
        }
        json_object_set_new(o, "records", jr);
        json_object_set_new(o, "usable", json_integer((json_int_t)usable));
        bool secure_chain = m->dnssec && m->secure && m->h[i].secure;
        if (t->st == DNS_TLSA_BOGUS || t->st == DNS_TLSA_FAIL) {
            dane = "fail";
            snprintf(err, sizeof(err), "TLSA lookup %s: %s: delivery defers this host",
                     dns_tlsa_status_name(t->st), t->why);
        } else if (t->st != DNS_TLSA_SECURE || !secure_chain) {
            snprintf(err, sizeof(err), "DANE does not apply (%s)",
                     !secure_chain ? "MX or address records not DNSSEC-secure"
                                   : "no secure TLSA records");
        } else if (!m->h[i].have_addr || !ctx) {
            dane = usable ? "applies" : "encrypt";
            snprintf(err, sizeof(err), "%s", !ctx ? "no TLS client context" : "no address");
        } else {
            dane = usable ? "applies" : "encrypt";
            struct probe p = {
                .host = host, .domain = domain, .canonical = m->h[i].canonical, .t = t};
            probe_run(&loop, c, ctx, &m->h[i].addr, &p);
            json_object_set_new(o, "starttls", json_boolean(p.tls));
            json_object_set_new(o, "tls_version", jstr_or_null(p.tls ? p.facts.version : ""));
            if (!p.tls) {
                result = "starttls-failed";
                snprintf(err, sizeof(err), "%s", p.error[0] ? p.error : "no TLS session");
            } else if (!usable) {
                result = "encrypted";
                ok = true;
            } else if (p.matched && p.res.status == TLS_DANE_VERIFIED) {
                result = "verified";
                snprintf(matched, sizeof(matched), "%u %u %u", p.res.usage, p.res.selector,
                         p.res.mtype);
                ok = true;
            } else {
                result = p.matched ? tls_dane_status_name(p.res.status) : "no-match";
                const char *txt = p.matched ? p.res.text : p.error;
                if (strncmp(txt, "dane: ", 6) == 0)
                    txt += 6;
                snprintf(err, sizeof(err), "%s", txt);
            }
            if (!as_json) {
                if (p.tls)
                    printf("  starttls: ok: %s %s (SNI %s)\n", p.facts.version, p.facts.cipher,
                           host);
                else
                    printf("  starttls: FAIL: %s\n", p.error);
                if (ok && matched[0])
                    printf("  dane: ok: verified, matched %s (depth %d)\n", matched, p.res.depth);
                else if (ok)
                    printf("  dane: ok: no usable record: TLS without authentication\n");
                else if (p.tls)
                    printf("  dane: FAIL: %s: %s\n", result, err);
            }
        }
        if (!as_json && !result)
            printf("  dane: FAIL: %s\n", err);
        json_object_set_new(o, "dane", json_string(dane));
        json_object_set_new(o, "result", jstr_or_null(result));
        json_object_set_new(o, "matched", jstr_or_null(matched));
        json_object_set_new(o, "error", jstr_or_null(ok ? "" : err));
        json_object_set_new(o, "ok", json_boolean(ok));
        json_array_append_new(jh, o);
        if (!ok)
            all_ok = false;
    }
    if (mx_ok && m->n == 0)
        all_ok = false;
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "domain", json_string(domain));
        json_object_set_new(o, "dnssec", json_boolean(m && m->dnssec));
        json_object_set_new(o, "mx_status", json_string(dns_status_name(m ? m->st : DNS_TEMPFAIL)));
        json_object_set_new(o, "mx_secure", json_boolean(m && m->secure));
        json_object_set_new(o, "hosts", jh);
        json_object_set_new(o, "ok", json_boolean(all_ok));
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        json_decref(jh);
        printf("verdict: %s\n",
               all_ok ? "ok: DANE applies to every MX host and holds" : "FAIL: see above");
    }
    if (t)
        tlsa_clear(t);
    free(t);
    free(m);
    tls_ctx_free(ctx);
    dns_free(dns);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return all_ok ? 0 : 1;
}

int ctl_dane(struct conf *c, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "check") != 0) {
        usage();
        return EXIT_USAGE;
    }
    bool as_json = false;
    const char *dom = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (!dom && argv[i][0] != '-')
            dom = argv[i];
        else {
            usage();
            return EXIT_USAGE;
        }
    }
    if (!dom || !dns_name_valid(dom)) {
        usage();
        return EXIT_USAGE;
    }
    return dane_check(c, dom, as_json);
}
