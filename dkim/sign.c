/*
 * sign.c - tag lists, the header hash and signing (RFC 6376 3.2, 3.5, 3.7,
 * 5.4, 5.4.2; RFC 8463 3).
 *
 * What Convoy signs: relaxed/relaxed, t= set, no l=, the header fields of
 * the configured list that are present, each as many times as it occurs,
 * and From once more than it occurs (RFC 6376 8.15: a From field added
 * later then breaks the signature, because the extra h= entry that hashed
 * to nothing would now select it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include "dkim.h"
#include "dkim_int.h"

#define FOLD 78

const char *const dkim_default_headers[] = {
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Sender",
};
const size_t dkim_n_default_headers =
    sizeof(dkim_default_headers) / sizeof(dkim_default_headers[0]);

static bool is_fws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static struct view trim(const char *p, size_t n)
{
    while (n > 0 && is_fws(p[0])) {
        p++;
        n--;
    }
    while (n > 0 && is_fws(p[n - 1]))
        n--;
    return (struct view){p, n};
}

/* ---- tag lists (RFC 6376 3.2) --------------------------------------------- */

static bool tag_name_ok(struct view v)
{
    if (v.len == 0 ||
        !((v.ptr[0] >= 'a' && v.ptr[0] <= 'z') || (v.ptr[0] >= 'A' && v.ptr[0] <= 'Z')))
        return false;
    for (size_t i = 1; i < v.len; i++) {
        char c = v.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

int dkim_tags_parse(struct view list, struct dkim_tag *tags, size_t max, size_t *n)
{
    *n = 0;
    size_t i = 0;
    while (i <= list.len) {
        const char *semi = memchr(list.ptr + i, ';', list.len - i);
        size_t end = semi ? (size_t)(semi - list.ptr) : list.len;
        struct view spec = trim(list.ptr + i, end - i);
        i = end + 1;
        if (spec.len == 0) {
            /* Only the last spec may be empty (after a trailing ';'). */
            if (semi)
                return ERR_INVAL;
            break;
        }
        const char *eq = memchr(spec.ptr, '=', spec.len);
        if (!eq)
            return ERR_INVAL;
        struct view name = trim(spec.ptr, (size_t)(eq - spec.ptr));
        struct view value = trim(eq + 1, spec.len - (size_t)(eq - spec.ptr) - 1);
        if (!tag_name_ok(name))
            return ERR_INVAL;
        for (size_t k = 0; k < *n; k++)
            if (tags[k].name.len == name.len && memcmp(tags[k].name.ptr, name.ptr, name.len) == 0)
                return ERR_INVAL; /* 3.2: a duplicate tag is an error */
        if (*n == max)
            return ERR_TOOBIG;
        tags[(*n)++] = (struct dkim_tag){name, value};
        if (!semi)
            break;
    }
    return 0;
}

const struct dkim_tag *dkim_tag_get(const struct dkim_tag *tags, size_t n, const char *name)
{
    size_t l = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (tags[i].name.len == l && memcmp(tags[i].name.ptr, name, l) == 0)
            return &tags[i];
    return NULL;
}

/* ---- the header hash ------------------------------------------------------------ */

static int hash_update(wc_Sha256 *sha, const struct buf *b)
{
    return wc_Sha256Update(sha, (const byte *)b->data, (word32)b->len) == 0 ? 0 : ERR_INVAL;
}

int dkim_header_hash(enum dkim_canon c, const struct dkim_headers *h, struct view hlist,
                     struct view sig, uint8_t out[32])
{
    bool *used = calloc(h->n ? h->n : 1, sizeof(*used));
    if (!used)
        return ERR_NOMEM;
    wc_Sha256 sha;
    if (wc_InitSha256(&sha) != 0) {
        free(used);
        return ERR_INVAL;
    }
    struct buf cb;
    buf_init(&cb, 1024 * 1024);
    int rc = 0;
    size_t i = 0;
    while (rc == 0 && i < hlist.len) {
        const char *colon = memchr(hlist.ptr + i, ':', hlist.len - i);
        size_t end = colon ? (size_t)(colon - hlist.ptr) : hlist.len;
        struct view name = trim(hlist.ptr + i, end - i);
        i = end + 1;
        if (name.len == 0)
            continue;
        /* 5.4.2: several instances are signed from the bottom up; a name
         * with no instance left contributes nothing. */
        for (size_t k = h->n; k-- > 0;) {
            if (used[k] || h->v[k].name.len != name.len ||
                strncasecmp(h->v[k].name.ptr, name.ptr, name.len) != 0)
                continue;
            used[k] = true;
            buf_reset(&cb);
            rc = dkim_canon_header(c, h->v[k].raw, &cb);
            if (rc == 0)
                rc = hash_update(&sha, &cb);
            break;
        }
    }
    free(used);
    /* 3.7: the signature field itself last, its b= value removed, without
     * the final CRLF. */
    if (rc == 0) {
        size_t n = sig.len;
        if (n >= 2 && sig.ptr[n - 2] == '\r' && sig.ptr[n - 1] == '\n')
            n -= 2;
        const char *colon = memchr(sig.ptr, ':', n);
        size_t p = colon ? (size_t)(colon - sig.ptr) + 1 : n;
        size_t cut_from = n, cut_to = n;
        while (p < n) {
            const char *semi = memchr(sig.ptr + p, ';', n - p);
            size_t end = semi ? (size_t)(semi - sig.ptr) : n;
            const char *eq = memchr(sig.ptr + p, '=', end - p);
            if (eq) {
                struct view tn = trim(sig.ptr + p, (size_t)(eq - sig.ptr) - p);
                if (tn.len == 1 && tn.ptr[0] == 'b') {
                    cut_from = (size_t)(eq - sig.ptr) + 1;
                    cut_to = end;
                    break;
                }
            }
            p = end + 1;
        }
        struct buf field;
        buf_init(&field, sig.len + 4);
        rc = buf_append(&field, sig.ptr, cut_from);
        if (rc == 0)
            rc = buf_append(&field, sig.ptr + cut_to, n - cut_to);
        if (rc == 0)
            rc = buf_append(&field, "\r\n", 2);
        buf_reset(&cb);
        if (rc == 0)
            rc = dkim_canon_header(c, (struct view){field.data, field.len}, &cb);
        if (rc == 0) {
            cb.len -= 2;
            rc = hash_update(&sha, &cb);
        }
        buf_free(&field);
    }
    if (rc == 0 && wc_Sha256Final(&sha, out) != 0)
        rc = ERR_INVAL;
    wc_Sha256Free(&sha);
    buf_free(&cb);
    return rc;
}

/* c= tag: header[/body], each "simple" or "relaxed"; default simple/simple. */
int dkim_canon_parse(struct view v, enum dkim_canon *hc, enum dkim_canon *bc)
{
    *hc = *bc = DKIM_CANON_SIMPLE;
    if (v.len == 0)
        return 0;
    const char *slash = memchr(v.ptr, '/', v.len);
    struct view a = {v.ptr, slash ? (size_t)(slash - v.ptr) : v.len};
    struct view b = slash ? (struct view){slash + 1, v.len - a.len - 1} : (struct view){"", 0};
    if (view_eq_ci(a, "relaxed"))
        *hc = DKIM_CANON_RELAXED;
    else if (!view_eq_ci(a, "simple"))
        return ERR_INVAL;
    if (slash) {
        if (view_eq_ci(b, "relaxed"))
            *bc = DKIM_CANON_RELAXED;
        else if (!view_eq_ci(b, "simple"))
            return ERR_INVAL;
    }
    return 0;
}

/* ---- signing --------------------------------------------------------------------------- */

int dkim_sign_field(const struct dkim_key *key, const char *msg, const struct dkim_headers *h,
                    struct view sig, struct buf *out, struct buf *why)
{
    (void)msg;
    const char *colon = memchr(sig.ptr, ':', sig.len);
    if (!colon) {
        buf_printf(why, "signature field without a colon");
        return ERR_INVAL;
    }
    struct dkim_tag tags[DKIM_MAX_TAGS];
    size_t nt;
    struct view value = {colon + 1, sig.len - (size_t)(colon + 1 - sig.ptr)};
    if (dkim_tags_parse(value, tags, DKIM_MAX_TAGS, &nt) != 0) {
        buf_printf(why, "malformed signature tag list");
        return ERR_INVAL;
    }
    const struct dkim_tag *ht = dkim_tag_get(tags, nt, "h");
    const struct dkim_tag *ct = dkim_tag_get(tags, nt, "c");
    enum dkim_canon hc, bc;
    if (!ht || dkim_canon_parse(ct ? ct->value : (struct view){"", 0}, &hc, &bc) != 0) {
        buf_printf(why, "signature without h= or with a bad c=");
        return ERR_INVAL;
    }
    uint8_t digest[32];
    int rc = dkim_header_hash(hc, h, ht->value, sig, digest);
    if (rc) {
        buf_printf(why, "cannot hash the header: %s", err_str(rc));
        return rc;
    }
    return dkim_key_sign_digest(key, digest, out, why);
}

/* Append s, starting a continuation line first if it would pass FOLD. */
static int fold_append(struct buf *b, size_t *col, const char *s, size_t n)
{
    if (*col + n > FOLD && *col > 1) {
        int rc = buf_append(b, "\r\n\t", 3);
        if (rc)
            return rc;
        *col = 1;
    }
    *col += n;
    return buf_append(b, s, n);
}

/* Is name (of length n) already among the first k names? */
static bool seen_before(const char *const *names, size_t k, const char *name)
{
    for (size_t i = 0; i < k; i++)
        if (strcasecmp(names[i], name) == 0)
            return true;
    return false;
}

static size_t occurrences(const struct dkim_headers *h, const char *name)
{
    size_t c = 0;
    for (size_t i = 0; i < h->n; i++)
        if (view_eq_ci(h->v[i].name, name))
            c++;
    return c;
}

static bool header_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 127 || *s == ':' || *s == ';')
            return false;
    return true;
}

int dkim_sign(const struct dkim_sign_opts *o, const char *msg, size_t len,
              const struct dkim_headers *h, struct buf *out, struct buf *why)
{
    const char *const *names = o->headers ? o->headers : dkim_default_headers;
    size_t nn = o->headers ? o->n_headers : dkim_n_default_headers;
    /* A message starting with white space would continue the field put in
     * front of it (RFC 5322 2.2.3). */
    if (len > 0 && (msg[0] == ' ' || msg[0] == '\t')) {
        buf_printf(why, "message starts with a continuation line");
        return ERR_INVAL;
    }
    uint8_t bh[32];
    int rc = 0;
    if (o->body_hash)
        memcpy(bh, o->body_hash, sizeof(bh));
    else
        rc = dkim_body_hash(DKIM_CANON_RELAXED, msg + h->body_off, len - h->body_off, -1, bh, NULL);
    if (rc) {
        buf_printf(why, "cannot hash the body: %s", err_str(rc));
        return rc;
    }
    struct buf f;
    buf_init(&f, 64 * 1024);
    size_t col;
    rc = buf_printf(
        &f, "DKIM-Signature: v=1; a=%s; c=relaxed/relaxed;\r\n\td=%s; s=%s; t=%lld;\r\n\th=",
        dkim_alg_name(dkim_key_alg(o->key)), o->domain, o->selector, (long long)o->t);
    col = rc == 0 ? f.len - (size_t)((const char *)memrchr(f.data, '\t', f.len) - f.data) : 0;
    bool first = true;
    /* From first, whether or not the list names it: RFC 6376 5.4 requires
     * it. */
    for (size_t i = 0; rc == 0 && i <= nn; i++) {
        const char *name = i == 0 ? "From" : names[i - 1];
        if (i > 0 && (strcasecmp(name, "From") == 0 || !header_name_ok(name) ||
                      seen_before(names, i - 1, name)))
            continue;
        size_t count = occurrences(h, name) + (i == 0 ? 1 : 0);
        for (size_t k = 0; rc == 0 && k < count; k++) {
            if (!first) {
                rc = buf_append(&f, ":", 1);
                col++;
            }
            if (rc == 0)
                rc = fold_append(&f, &col, name, strlen(name));
            first = false;
        }
    }
    if (rc == 0)
        rc = buf_append_str(&f, ";\r\n\tbh=");
    if (rc == 0)
        rc = base64_encode(bh, sizeof(bh), &f);
    if (rc == 0)
        rc = buf_append_str(&f, ";\r\n\tb=");
    if (rc) {
        buf_free(&f);
        buf_printf(why, "signature field too long");
        return rc;
    }
    struct buf b;
    buf_init(&b, 4096);
    rc = dkim_sign_field(o->key, msg, h, (struct view){f.data, f.len}, &b, why);
    /* b= folded to lines of FOLD octets; FWS may appear anywhere in its
     * value (3.5). */
    col = 3;
    for (size_t i = 0; rc == 0 && i < b.len;) {
        size_t room = col < FOLD ? FOLD - col : 0;
        if (room == 0) {
            rc = buf_append(&f, "\r\n\t", 3);
            col = 1;
            continue;
        }
        size_t m = b.len - i < room ? b.len - i : room;
        rc = buf_append(&f, b.data + i, m);
        col += m;
        i += m;
    }
    if (rc == 0)
        rc = buf_append(&f, "\r\n", 2);
    if (rc == 0)
        rc = buf_append(out, f.data, f.len);
    buf_free(&b);
    buf_free(&f);
    return rc;
}
