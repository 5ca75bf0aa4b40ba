/*
 * verify.c - checking a DKIM-Signature field against its key record
 * (RFC 6376 3.5, 3.6.1, 6.1; RFC 8301; RFC 8463 4).
 *
 * Both canonicalizations are accepted, l= is honoured, rsa-sha1 is refused
 * (RFC 8301 3.1) and so are RSA keys under 1024 bits (RFC 8301 3.2).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dkim.h"
#include "dkim_int.h"

const char *dkim_result_name(enum dkim_result r)
{
    switch (r) {
    case DKIM_PASS:
        return "pass";
    case DKIM_FAIL:
        return "fail";
    case DKIM_TEMPERROR:
        return "temperror";
    case DKIM_PERMERROR:
        break;
    }
    return "permerror";
}

static void set_result(struct dkim_check *c, enum dkim_result r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_result(struct dkim_check *c, enum dkim_result r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    c->result = r;
    vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
    va_end(ap);
}

static void copy_view(char *dst, size_t size, struct view v)
{
    size_t n = v.len < size - 1 ? v.len : size - 1;
    memcpy(dst, v.ptr, n);
    dst[n] = '\0';
}

static bool parse_u64(struct view v, uint64_t *out)
{
    char tmp[24];
    if (v.len == 0 || v.len >= sizeof(tmp))
        return false;
    copy_view(tmp, sizeof(tmp), v);
    return str_to_u64(tmp, out) == 0;
}

/* Does the list (h=) contain name? */
static bool list_has(struct view list, const char *name)
{
    size_t i = 0, l = strlen(name);
    while (i < list.len) {
        const char *colon = memchr(list.ptr + i, ':', list.len - i);
        size_t end = colon ? (size_t)(colon - list.ptr) : list.len;
        size_t a = i, b = end;
        while (a < b && strchr(" \t\r\n", list.ptr[a]))
            a++;
        while (b > a && strchr(" \t\r\n", list.ptr[b - 1]))
            b--;
        if (b - a == l && strncasecmp(list.ptr + a, name, l) == 0)
            return true;
        i = end + 1;
    }
    return false;
}

/* The parsed signature; views into the message. */
struct sig {
    struct dkim_tag tags[DKIM_MAX_TAGS];
    size_t nt;
    enum dkim_alg alg;
    enum dkim_canon hc, bc;
    struct view b, bh, d, h, s;
    int64_t l; /* -1: none */
    bool has_x;
    uint64_t x;
};

static bool sig_parse(const char *msg, const struct dkim_headers *h, size_t fi, struct sig *sg,
                      struct dkim_check *c)
{
    (void)msg;
    memset(sg, 0, sizeof(*sg));
    memset(c, 0, sizeof(*c));
    c->result = DKIM_PERMERROR;
    if (fi >= h->n || !view_eq_ci(h->v[fi].name, "DKIM-Signature")) {
        set_result(c, DKIM_PERMERROR, "not a DKIM-Signature field");
        return false;
    }
    struct view value = dkim_field_value(&h->v[fi]);
    if (dkim_tags_parse(value, sg->tags, DKIM_MAX_TAGS, &sg->nt) != 0) {
        set_result(c, DKIM_PERMERROR, "malformed tag list");
        return false;
    }
    static const char *const required[] = {"v", "a", "b", "bh", "d", "h", "s"};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (!dkim_tag_get(sg->tags, sg->nt, required[i])) {
            set_result(c, DKIM_PERMERROR, "signature missing required tag %s=", required[i]);
            return false;
        }
    }
#define TAG(n) (dkim_tag_get(sg->tags, sg->nt, n)->value)
    sg->b = TAG("b");
    sg->bh = TAG("bh");
    sg->d = TAG("d");
    sg->h = TAG("h");
    sg->s = TAG("s");
    struct view v = TAG("v"), a = TAG("a");
#undef TAG
    copy_view(c->domain, sizeof(c->domain), sg->d);
    copy_view(c->selector, sizeof(c->selector), sg->s);
    copy_view(c->alg, sizeof(c->alg), a);
    if (!(v.len == 1 && v.ptr[0] == '1')) {
        set_result(c, DKIM_PERMERROR, "incompatible version v=%.*s", (int)v.len, v.ptr);
        return false;
    }
    if (view_eq_ci(a, "rsa-sha256")) {
        sg->alg = DKIM_RSA_SHA256;
    } else if (view_eq_ci(a, "ed25519-sha256")) {
        sg->alg = DKIM_ED25519_SHA256;
    } else if (view_eq_ci(a, "rsa-sha1")) {
        set_result(c, DKIM_PERMERROR, "rsa-sha1 is not accepted (RFC 8301 3.1)");
        return false;
    } else {
        set_result(c, DKIM_PERMERROR, "unknown algorithm a=%s", c->alg);
        return false;
    }
    const struct dkim_tag *ct = dkim_tag_get(sg->tags, sg->nt, "c");
    if (dkim_canon_parse(ct ? ct->value : (struct view){"", 0}, &sg->hc, &sg->bc) != 0) {
        set_result(c, DKIM_PERMERROR, "unknown canonicalization c=%.*s", (int)ct->value.len,
                   ct->value.ptr);
        return false;
    }
    if (!list_has(sg->h, "from")) {
        set_result(c, DKIM_PERMERROR, "From field not signed (h= lacks from)");
        return false;
    }
    if (sg->d.len == 0 || sg->s.len == 0 || sg->d.len >= 254 || sg->s.len >= 254) {
        set_result(c, DKIM_PERMERROR, "bad d= or s=");
        return false;
    }
    for (size_t i = 0; i < sg->d.len; i++) {
        char ch = sg->d.ptr[i];
        if ((unsigned char)ch <= ' ' || ch == ';' || ch == '\\') {
            set_result(c, DKIM_PERMERROR, "bad d=");
            return false;
        }
    }
    for (size_t i = 0; i < sg->s.len; i++) {
        char ch = sg->s.ptr[i];
        if ((unsigned char)ch <= ' ' || ch == ';' || ch == '\\') {
            set_result(c, DKIM_PERMERROR, "bad s=");
            return false;
        }
    }
    const struct dkim_tag *it = dkim_tag_get(sg->tags, sg->nt, "i");
    if (it) {
        /* 3.5: the domain of i= is d= or a subdomain of it. */
        const char *at = memchr(it->value.ptr, '@', it->value.len);
        struct view idom =
            at ? (struct view){at + 1, it->value.len - (size_t)(at + 1 - it->value.ptr)}
               : (struct view){"", 0};
        bool ok = idom.len >= sg->d.len &&
                  strncasecmp(idom.ptr + idom.len - sg->d.len, sg->d.ptr, sg->d.len) == 0 &&
                  (idom.len == sg->d.len || idom.ptr[idom.len - sg->d.len - 1] == '.');
        if (!ok) {
            set_result(c, DKIM_PERMERROR, "i= domain is not d= or under it");
            return false;
        }
    }
    sg->l = -1;
    const struct dkim_tag *lt = dkim_tag_get(sg->tags, sg->nt, "l");
    uint64_t u;
    if (lt) {
        if (!parse_u64(lt->value, &u) || u > INT64_MAX) {
            set_result(c, DKIM_PERMERROR, "bad l=");
            return false;
        }
        sg->l = (int64_t)u;
    }
    const struct dkim_tag *xt = dkim_tag_get(sg->tags, sg->nt, "x");
    const struct dkim_tag *tt = dkim_tag_get(sg->tags, sg->nt, "t");
    uint64_t t = 0;
    if (tt && !parse_u64(tt->value, &t)) {
        set_result(c, DKIM_PERMERROR, "bad t=");
        return false;
    }
    if (xt) {
        if (!parse_u64(xt->value, &sg->x) || (tt && sg->x < t)) {
            set_result(c, DKIM_PERMERROR, "bad x=");
            return false;
        }
        sg->has_x = true;
    }
    snprintf(c->query, sizeof(c->query), "%s._domainkey.%s", c->selector, c->domain);
    c->reason[0] = '\0';
    return true;
}

void dkim_check_parse(const char *msg, const struct dkim_headers *h, size_t fi,
                      struct dkim_check *c)
{
    struct sig sg;
    sig_parse(msg, h, fi, &sg, c);
}

/* Is the key record's k= the key type a= needs, and may it be used? */
static bool key_record(const char *txt, const struct sig *sg, uint8_t *pub, size_t *pub_len,
                       struct dkim_check *c)
{
    struct dkim_tag tags[DKIM_MAX_TAGS];
    size_t nt;
    if (dkim_tags_parse((struct view){txt, strlen(txt)}, tags, DKIM_MAX_TAGS, &nt) != 0) {
        set_result(c, DKIM_PERMERROR, "key record syntax error");
        return false;
    }
    const struct dkim_tag *v = dkim_tag_get(tags, nt, "v");
    /* 3.6.1: v=, when present, is the first tag and is DKIM1. */
    if (v && (v != &tags[0] || !(v->value.len == 5 && memcmp(v->value.ptr, "DKIM1", 5) == 0))) {
        set_result(c, DKIM_PERMERROR, "key record has a bad v=");
        return false;
    }
    const struct dkim_tag *k = dkim_tag_get(tags, nt, "k");
    const char *want = sg->alg == DKIM_ED25519_SHA256 ? "ed25519" : "rsa";
    if ((k && !view_eq_ci(k->value, want)) || (!k && sg->alg != DKIM_RSA_SHA256)) {
        set_result(c, DKIM_PERMERROR, "key type k=%.*s does not fit a=%s",
                   k ? (int)k->value.len : 3, k ? k->value.ptr : "rsa", c->alg);
        return false;
    }
    const struct dkim_tag *hh = dkim_tag_get(tags, nt, "h");
    if (hh && !list_has(hh->value, "sha256")) {
        set_result(c, DKIM_PERMERROR, "key record does not allow sha256 (h=)");
        return false;
    }
    const struct dkim_tag *s = dkim_tag_get(tags, nt, "s");
    if (s && !list_has(s->value, "*") && !list_has(s->value, "email")) {
        set_result(c, DKIM_PERMERROR, "key record is not for email (s=)");
        return false;
    }
    const struct dkim_tag *p = dkim_tag_get(tags, nt, "p");
    if (!p) {
        set_result(c, DKIM_PERMERROR, "key record has no p=");
        return false;
    }
    if (p->value.len == 0) {
        set_result(c, DKIM_PERMERROR, "key revoked (empty p=)");
        return false;
    }
    if (dkim_b64_decode(p->value, pub, pub_len) != 0) {
        set_result(c, DKIM_PERMERROR, "key record p= is not base64");
        return false;
    }
    return true;
}

void dkim_check_verify(const char *msg, size_t len, const struct dkim_headers *h, size_t fi,
                       const char *txt, int64_t now, struct dkim_check *c)
{
    struct sig sg;
    if (!sig_parse(msg, h, fi, &sg, c))
        return;
    if (sg.has_x && now > 0 && (uint64_t)now > sg.x) {
        set_result(c, DKIM_PERMERROR, "signature expired (x=)");
        return;
    }
    if (!txt) {
        set_result(c, DKIM_PERMERROR, "no key record at %s", c->query);
        return;
    }
    uint8_t pub[2048];
    size_t pub_len = sizeof(pub);
    if (!key_record(txt, &sg, pub, &pub_len, c))
        return;
    uint8_t want[32], got[32];
    size_t wl = sizeof(want);
    if (dkim_b64_decode(sg.bh, want, &wl) != 0 || wl != 32) {
        set_result(c, DKIM_PERMERROR, "bh= is not a SHA-256 digest in base64");
        return;
    }
    uint64_t canon_len = 0;
    if (dkim_body_hash(sg.bc, msg + h->body_off, len - h->body_off, sg.l, got, &canon_len) != 0) {
        set_result(c, DKIM_PERMERROR, "cannot hash the body");
        return;
    }
    if (sg.l >= 0 && (uint64_t)sg.l > canon_len) {
        set_result(c, DKIM_PERMERROR, "l= is longer than the body");
        return;
    }
    if (memcmp(want, got, 32) != 0) {
        set_result(c, DKIM_FAIL, "body hash did not verify");
        return;
    }
    uint8_t sig[1024];
    size_t sl = sizeof(sig);
    if (dkim_b64_decode(sg.b, sig, &sl) != 0 || sl == 0) {
        set_result(c, DKIM_PERMERROR, "b= is not base64");
        return;
    }
    uint8_t digest[32];
    if (dkim_header_hash(sg.hc, h, sg.h, h->v[fi].raw, digest) != 0) {
        set_result(c, DKIM_PERMERROR, "cannot hash the header");
        return;
    }
    char why[160];
    int rc = dkim_verify_digest(sg.alg, pub, pub_len, digest, sig, sl, why, sizeof(why));
    if (rc == 0)
        set_result(c, DKIM_PASS, "signature verified");
    else
        set_result(c, rc == ERR_PROTO ? DKIM_PERMERROR : DKIM_FAIL, "%s", why);
}
