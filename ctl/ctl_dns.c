/*
 * ctl_dns.c - convoyctl dns mx|a|aaaa|txt|tlsa NAME [--json]: what the
 * daemon's resolver sees, for operators. It builds the resolver from the
 * same settings as convoyd (dns_servers, dns_timeout, dns_tries,
 * smtp_dns_support_level, dns_validating_servers) and runs it on a loop of
 * its own.
 *
 * Output: a first line "NAME TYPE: STATUS (why)" with the classification of
 * dns.h (and, on failure, whether it is permanent or temporary and for a
 * null MX the 556 5.1.10 a delivery would report), then one line per record:
 *   mx:   PREF HOST [ADDR, ADDR]   (a host without addresses says why)
 *   a:    ADDR
 *   txt:  the record's strings joined (RFC 7208 3.3), non-printables as \DDD
 *   tlsa: USAGE SELECTOR MTYPE HEXDATA; NAME is a host, looked up at
 *         _PORT._tcp.NAME with PORT = smtp_destination_port (25; RFC 7672
 *         2.2), or taken as is when it starts with "_"
 * With smtp_dns_support_level = dnssec and trusted resolvers the first line
 * ends in ", DNSSEC secure" or ", DNSSEC insecure" (", DNSSEC bogus" for a
 * SERVFAIL), and a TLSA answer adds "; TLSA STATUS" (dns_tlsa_classify()).
 * --json prints one object instead, always with "dnssec" (is the status
 * trusted) and "secure"; MX hosts carry their own "secure" (addresses).
 * Exit: 0 found, 1 failure, 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <uv.h>

#include "dns.h"
#include "ctl.h"

struct ctl_run {
    bool json;
    bool done;
    int rc;
    const char *type;
};

static void dns_usage(void)
{
    fprintf(stderr, "usage: convoyctl dns mx|a|aaaa|txt|tlsa NAME [--json]\n");
}

/* The daemon's resolver settings, without a cache: one lookup has nothing
 * to reuse. */
static int options_from_conf(const struct conf *c, struct dns_options *o)
{
    settings_dns_options(c, o);
    o->cache_size = 0;
    return 0;
}

static const char *failure_kind(enum dns_status s)
{
    if (s == DNS_NULL_MX)
        return ": permanent failure, 556 5.1.10";
    if (dns_status_permanent(s))
        return ": permanent failure";
    if (s == DNS_TEMPFAIL)
        return ": temporary failure";
    return "";
}

/* ", DNSSEC secure" when the resolver's DNSSEC status is trusted. */
static const char *sec_text(bool dnssec, bool secure, bool servfail)
{
    if (!dnssec)
        return "";
    if (servfail)
        return ", DNSSEC bogus";
    return secure ? ", DNSSEC secure" : ", DNSSEC insecure";
}

static void print_header(const char *name, const char *type, enum dns_status s, const char *why,
                         const char *sec, const char *extra)
{
    printf("%s %s: %s (%s)%s%s%s\n", name, type, dns_status_name(s), why ? why : "",
           failure_kind(s), sec, extra);
}

static void hex_text(const uint8_t *p, size_t n, struct buf *out)
{
    char two[3];
    for (size_t i = 0; i < n; i++)
        buf_append(out, two, hex_encode(&p[i], 1, two, sizeof(two)));
}

/* TXT data as text: printable ASCII as is, the rest (and '\') as \DDD. */
static void txt_text(const struct dns_txt *t, struct buf *out)
{
    for (size_t i = 0; i < t->len; i++) {
        unsigned char ch = (unsigned char)t->text[i];
        if (ch < 0x20 || ch >= 0x7f || ch == '\\')
            buf_printf(out, "\\%03u", ch);
        else
            buf_append(out, &ch, 1);
    }
}

static json_t *addrs_json(const struct dns_addr *a, size_t n)
{
    json_t *arr = json_array();
    char text[64];
    for (size_t i = 0; i < n; i++) {
        dns_addr_format(&a[i], text, sizeof(text));
        json_array_append_new(arr, json_string(text));
    }
    return arr;
}

static json_t *head_json(const char *name, const char *type, enum dns_status s, const char *why,
                         uint32_t ttl, bool dnssec, bool secure)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:b, s:i, s:b, s:b}", "name", name, "type", type,
                     "status", dns_status_name(s), "why", why ? why : "", "permanent",
                     dns_status_permanent(s), "ttl", (json_int_t)ttl, "dnssec", dnssec, "secure",
                     secure);
}

static void json_out(json_t *o)
{
    char *s = json_dumps(o, JSON_INDENT(2));
    if (s) {
        printf("%s\n", s);
        free(s);
    }
    json_decref(o);
}

static void mx_done(void *arg, const struct dns_mx_result *r)
{
    struct ctl_run *run = arg;
    run->done = true;
    run->rc = (r->status == DNS_OK || r->status == DNS_IMPLICIT_MX) ? 0 : 1;
    if (run->json) {
        json_t *o = head_json(r->domain, "MX", r->status, r->why, r->ttl, r->dnssec, r->secure);
        json_t *hosts = json_array();
        for (size_t i = 0; i < r->n_hosts; i++) {
            const struct dns_mx_host *h = &r->hosts[i];
            json_t *hj = json_pack(
                "{s:i, s:s, s:s, s:s, s:b, s:o, s:b}", "pref", (json_int_t)h->pref, "host", h->name,
                "status", dns_status_name(h->status), "why", h->why ? h->why : "", "cname",
                h->cname, "addresses", addrs_json(h->addr, h->n_addr), "secure", h->secure);
            if (h->canonical)
                json_object_set_new(hj, "canonical", json_string(h->canonical));
            json_array_append_new(hosts, hj);
        }
        json_object_set_new(o, "hosts", hosts);
        json_out(o);
        return;
    }
    print_header(r->domain, "MX", r->status, r->why, sec_text(r->dnssec, r->secure, false), "");
    for (size_t i = 0; i < r->n_hosts; i++) {
        const struct dns_mx_host *h = &r->hosts[i];
        struct buf line;
        buf_init(&line, 64 * 1024);
        buf_printf(&line, "%u %s [", (unsigned)h->pref, h->name);
        for (size_t k = 0; k < h->n_addr; k++) {
            char text[64];
            dns_addr_format(&h->addr[k], text, sizeof(text));
            buf_printf(&line, "%s%s", k ? ", " : "", text);
        }
        buf_append_str(&line, "]");
        if (h->status != DNS_OK)
            buf_printf(&line, " %s (%s)", dns_status_name(h->status), h->why ? h->why : "");
        if (h->cname)
            buf_append_str(&line, " (CNAME)");
        if (r->dnssec)
            buf_append_str(&line, h->secure ? " (DNSSEC secure)" : " (DNSSEC insecure)");
        printf("%s\n", line.data ? line.data : "");
        buf_free(&line);
    }
}

static void rr_done(void *arg, const struct dns_result *r)
{
    struct ctl_run *run = arg;
    run->done = true;
    run->rc = r->status == DNS_OK ? 0 : 1;
    const char *name = r->name ? r->name : "";
    bool tlsa = r->qtype == DNS_T_TLSA;
    if (run->json) {
        json_t *o = head_json(name, run->type, r->status, r->why, r->ttl, r->dnssec, r->secure);
        json_t *recs = json_array();
        if (r->cname)
            json_object_set_new(o, "cname", json_string(r->cname));
        if (tlsa) {
            json_object_set_new(o, "tlsa", json_string(dns_tlsa_status_name(dns_tlsa_classify(r))));
            for (size_t i = 0; i < r->n_tlsa; i++) {
                struct buf hex;
                buf_init(&hex, 128 * 1024);
                hex_text(r->tlsa[i].data, r->tlsa[i].len, &hex);
                json_array_append_new(recs, json_pack("{s:i, s:i, s:i, s:s}", "usage",
                                                      (json_int_t)r->tlsa[i].usage, "selector",
                                                      (json_int_t)r->tlsa[i].selector, "mtype",
                                                      (json_int_t)r->tlsa[i].mtype, "data",
                                                      hex.data ? hex.data : ""));
                buf_free(&hex);
            }
            json_object_set_new(o, "records", recs);
        } else if (r->n_txt) {
            for (size_t i = 0; i < r->n_txt; i++)
                json_array_append_new(recs, json_stringn(r->txt[i].text, r->txt[i].len));
            json_object_set_new(o, "records", recs);
        } else {
            json_decref(recs);
            json_object_set_new(o, "records", addrs_json(r->addr, r->n_addr));
        }
        json_out(o);
        return;
    }
    char extra[64] = "";
    if (tlsa)
        snprintf(extra, sizeof(extra), "; TLSA %s", dns_tlsa_status_name(dns_tlsa_classify(r)));
    print_header(name, run->type, r->status, r->why, sec_text(r->dnssec, r->secure, r->servfail),
                 extra);
    for (size_t i = 0; i < r->n_tlsa; i++) {
        struct buf line;
        buf_init(&line, 128 * 1024);
        buf_printf(&line, "%u %u %u ", r->tlsa[i].usage, r->tlsa[i].selector, r->tlsa[i].mtype);
        hex_text(r->tlsa[i].data, r->tlsa[i].len, &line);
        printf("%s\n", line.data ? line.data : "");
        buf_free(&line);
    }
    char text[64];
    for (size_t i = 0; i < r->n_addr; i++) {
        dns_addr_format(&r->addr[i], text, sizeof(text));
        printf("%s\n", text);
    }
    for (size_t i = 0; i < r->n_txt; i++) {
        struct buf line;
        buf_init(&line, 256 * 1024);
        txt_text(&r->txt[i], &line);
        printf("%s\n", line.data ? line.data : "");
        buf_free(&line);
    }
}

int ctl_dns(struct conf *c, int argc, char **argv)
{
    struct ctl_run run = {0};
    const char *words[2];
    int nw = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            run.json = true;
        else if (nw < 2)
            words[nw++] = argv[i];
        else {
            dns_usage();
            return EXIT_USAGE;
        }
    }
    if (nw != 2) {
        dns_usage();
        return EXIT_USAGE;
    }
    static const struct {
        const char *word, *type;
        uint16_t qtype;
    } types[] = {{"mx", "MX", DNS_T_MX},
                 {"a", "A", DNS_T_A},
                 {"aaaa", "AAAA", DNS_T_AAAA},
                 {"txt", "TXT", DNS_T_TXT},
                 {"tlsa", "TLSA", DNS_T_TLSA}};
    uint16_t qtype = 0;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcasecmp(words[0], types[i].word) == 0) {
            qtype = types[i].qtype;
            run.type = types[i].type;
        }
    }
    if (!qtype) {
        dns_usage();
        return EXIT_USAGE;
    }

    struct dns_options o;
    options_from_conf(c, &o);
    uv_loop_t loop;
    if (uv_loop_init(&loop)) {
        fprintf(stderr, "convoyctl: dns: cannot start an event loop\n");
        return 1;
    }
    struct dns *d = NULL;
    int rc = dns_new(&loop, &o, &d);
    if (rc) {
        fprintf(stderr, "convoyctl: dns: cannot start the resolver: %s\n", err_str(rc));
        uv_loop_close(&loop);
        return 1;
    }
    if (qtype == DNS_T_MX)
        rc = dns_mx_resolve(d, words[1], mx_done, &run, NULL);
    else if (qtype == DNS_T_TLSA && words[1][0] != '_')
        rc = dns_tlsa_lookup(d, words[1], (uint16_t)c->smtp_destination_port, rr_done, &run, NULL);
    else
        rc = dns_lookup(d, words[1], qtype, rr_done, &run, NULL);
    if (rc == 0)
        uv_run(&loop, UV_RUN_DEFAULT);
    dns_free(d);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (rc) {
        fprintf(stderr, "convoyctl: dns: %s\n", err_str(rc));
        return 1;
    }
    fflush(stdout);
    return run.done ? run.rc : 1;
}
