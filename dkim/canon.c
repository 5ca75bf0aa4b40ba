/*
 * canon.c - the header section split into fields, the From domain, and the
 * two canonicalizations of RFC 6376 3.4 for headers and bodies.
 *
 * Invariants:
 *  - Only CRLF ends a line; a bare CR or LF is an ordinary byte (the SMTP
 *    server has already normalized or refused bare line ends).
 *  - Nothing reads past len; every field view lies inside the message.
 */
#include <stdlib.h>
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include "dkim.h"
#include "dkim_int.h"

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* Offset just past the CRLF ending the line that starts at p, or len. */
static size_t line_end(const char *msg, size_t len, size_t p)
{
    while (p < len) {
        const char *lf = memchr(msg + p, '\n', len - p);
        if (!lf)
            return len;
        size_t at = (size_t)(lf - msg);
        if (at > 0 && msg[at - 1] == '\r')
            return at + 1;
        p = at + 1;
    }
    return len;
}

int dkim_headers_parse(const char *msg, size_t len, struct dkim_headers *h)
{
    memset(h, 0, sizeof(*h));
    size_t cap = 0, p = 0;
    h->body_off = len;
    while (p < len) {
        if (len - p >= 2 && msg[p] == '\r' && msg[p + 1] == '\n') {
            h->body_off = p + 2;
            return 0;
        }
        size_t start = p;
        p = line_end(msg, len, p);
        /* RFC 5322 2.2.3: a line starting with white space continues the
         * field. */
        while (p < len && is_wsp(msg[p]))
            p = line_end(msg, len, p);
        if (h->n == DKIM_MAX_FIELDS)
            return ERR_TOOBIG;
        if (h->n == cap) {
            size_t ncap = cap ? cap * 2 : 32;
            struct dkim_field *nv = realloc(h->v, ncap * sizeof(*nv));
            if (!nv)
                return ERR_NOMEM;
            h->v = nv;
            cap = ncap;
        }
        struct dkim_field *f = &h->v[h->n++];
        f->raw = (struct view){msg + start, p - start};
        const char *colon = memchr(f->raw.ptr, ':', f->raw.len);
        size_t nlen = colon ? (size_t)(colon - f->raw.ptr) : 0;
        while (nlen > 0 && is_wsp(f->raw.ptr[nlen - 1]))
            nlen--;
        /* A name never spans lines; "name\r\n :" is no field name. */
        if (memchr(f->raw.ptr, '\n', nlen))
            nlen = 0;
        f->name = (struct view){f->raw.ptr, nlen};
    }
    return 0;
}

void dkim_headers_free(struct dkim_headers *h)
{
    free(h->v);
    h->v = NULL;
    h->n = 0;
}

struct view dkim_field_value(const struct dkim_field *f)
{
    const char *colon = memchr(f->raw.ptr, ':', f->raw.len);
    if (!colon || f->name.len == 0)
        return (struct view){f->raw.ptr + f->raw.len, 0};
    size_t off = (size_t)(colon - f->raw.ptr) + 1;
    return (struct view){colon + 1, f->raw.len - off};
}

/* ---- the From domain ------------------------------------------------------- */

/* Skip a comment starting at s[*i] == '(' (RFC 5322 3.2.2: nested, with
 * quoted-pairs). */
static void skip_comment(const char *s, size_t n, size_t *i)
{
    int depth = 0;
    while (*i < n) {
        char c = s[(*i)++];
        if (c == '\\' && *i < n)
            (*i)++;
        else if (c == '(')
            depth++;
        else if (c == ')' && --depth == 0)
            return;
    }
}

static void skip_quoted(const char *s, size_t n, size_t *i)
{
    (*i)++;
    while (*i < n) {
        char c = s[(*i)++];
        if (c == '\\' && *i < n)
            (*i)++;
        else if (c == '"')
            return;
    }
}

/* Copy the first mailbox's addr-spec of a From value to out, without
 * comments, quoted strings kept. */
static int first_addr_spec(struct view v, struct buf *out)
{
    const char *s = v.ptr;
    size_t n = v.len, i = 0;
    size_t angle_start = 0;
    bool in_angle = false, have_angle = false;
    struct buf plain;
    buf_init(&plain, 2048);
    int rc = 0;
    while (i < n && rc == 0) {
        char c = s[i];
        if (c == '(') {
            skip_comment(s, n, &i);
            continue;
        }
        if (c == '"') {
            size_t st = i;
            skip_quoted(s, n, &i);
            rc = buf_append(in_angle ? out : &plain, s + st, i - st);
            continue;
        }
        if (c == '<' && !in_angle) {
            in_angle = true;
            have_angle = true;
            angle_start = i;
            buf_reset(out);
            i++;
            continue;
        }
        if (c == '>' && in_angle)
            break;
        if (c == ',' && !in_angle)
            break;
        /* A group's display name ends at ':'; the mailbox list follows. */
        if (c == ':' && !in_angle) {
            buf_reset(&plain);
            i++;
            continue;
        }
        if (c == '\r' || c == '\n' || is_wsp(c)) {
            i++;
            continue;
        }
        rc = buf_append(in_angle ? out : &plain, &c, 1);
        i++;
    }
    (void)angle_start;
    if (rc == 0 && !have_angle) {
        buf_reset(out);
        rc = buf_append(out, plain.data ? plain.data : "", plain.len);
    }
    buf_free(&plain);
    return rc;
}

int dkim_from_domain(const char *msg, const struct dkim_headers *h, char *out, size_t size)
{
    (void)msg;
    const struct dkim_field *from = NULL;
    for (size_t i = 0; i < h->n; i++) {
        if (view_eq_ci(h->v[i].name, "from")) {
            if (from)
                return ERR_INVAL;
            from = &h->v[i];
        }
    }
    if (!from)
        return ERR_NOTFOUND;
    struct buf spec;
    buf_init(&spec, 2048);
    int rc = first_addr_spec(dkim_field_value(from), &spec);
    if (rc) {
        buf_free(&spec);
        return ERR_INVAL;
    }
    /* The domain is what follows the last '@' that is not inside a quoted
     * local part. */
    const char *d = NULL;
    for (size_t i = 0; i < spec.len; i++) {
        if (spec.data[i] == '"') {
            skip_quoted(spec.data, spec.len, &i);
            i--;
        } else if (spec.data[i] == '@') {
            d = spec.data + i + 1;
        }
    }
    size_t dlen = d ? spec.len - (size_t)(d - spec.data) : 0;
    while (dlen > 0 && d[dlen - 1] == '.')
        dlen--;
    if (!d || dlen == 0 || d[0] == '[' || memchr(d, '@', dlen)) {
        buf_free(&spec);
        return ERR_INVAL;
    }
    if (dlen >= size) {
        buf_free(&spec);
        return ERR_TOOBIG;
    }
    for (size_t i = 0; i < dlen; i++) {
        char c = d[i];
        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[dlen] = '\0';
    buf_free(&spec);
    return 0;
}

/* ---- header canonicalization --------------------------------------------- */

int dkim_canon_header(enum dkim_canon c, struct view field, struct buf *out)
{
    if (c == DKIM_CANON_SIMPLE)
        return buf_append(out, field.ptr, field.len);
    /* RFC 6376 3.4.2: lower-case name, unfold, runs of WSP to one SP, no
     * WSP at the end of the value or around the colon. */
    size_t n = field.len;
    if (n >= 2 && field.ptr[n - 2] == '\r' && field.ptr[n - 1] == '\n')
        n -= 2;
    const char *colon = memchr(field.ptr, ':', n);
    size_t name_end = colon ? (size_t)(colon - field.ptr) : n;
    int rc = buf_reserve(out, n + 3);
    if (rc)
        return rc;
    size_t i = 0;
    bool space = false;
    for (; i < name_end; i++) {
        char ch = field.ptr[i];
        if (is_wsp(ch) || ch == '\r' || ch == '\n')
            continue;
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch - 'A' + 'a');
        out->data[out->len++] = ch;
    }
    if (!colon) {
        out->data[out->len++] = '\r';
        out->data[out->len++] = '\n';
        out->data[out->len] = '\0';
        return 0;
    }
    out->data[out->len++] = ':';
    bool started = false;
    for (i = name_end + 1; i < n; i++) {
        char ch = field.ptr[i];
        if (ch == '\r' && i + 1 < n && field.ptr[i + 1] == '\n') {
            i++;
            continue;
        }
        if (is_wsp(ch)) {
            space = true;
            continue;
        }
        if (space && started)
            out->data[out->len++] = ' ';
        space = false;
        started = true;
        out->data[out->len++] = ch;
    }
    out->data[out->len++] = '\r';
    out->data[out->len++] = '\n';
    out->data[out->len] = '\0';
    return 0;
}

/* ---- body canonicalization ------------------------------------------------ */

/* Where canonical body octets go: a buffer, or a hash with an optional
 * limit. */
struct body_sink {
    struct buf *out;
    wc_Sha256 *sha;
    int64_t remaining; /* < 0: no limit */
    uint64_t total;
    int rc;
};

static void emit(struct body_sink *s, const char *p, size_t n)
{
    s->total += n;
    if (s->rc || n == 0)
        return;
    if (s->remaining >= 0) {
        if ((int64_t)n > s->remaining)
            n = (size_t)s->remaining;
        s->remaining -= (int64_t)n;
        if (n == 0)
            return;
    }
    if (s->out)
        s->rc = buf_append(s->out, p, n);
    else if (wc_Sha256Update(s->sha, (const byte *)p, (word32)n) != 0)
        s->rc = ERR_INVAL;
}

static void emit_crlfs(struct body_sink *s, size_t k)
{
    static const char crlfs[] = "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";
    while (k > 0) {
        size_t m = k > 8 ? 8 : k;
        emit(s, crlfs, m * 2);
        k -= m;
    }
}

/* What the body canonicalization carries from one line to the next. */
struct canon_state {
    size_t empty; /* empty lines held back: dropped if nothing follows */
    bool any;     /* a non-empty line was seen */
};

/* One line of the body, content octets without its CRLF. */
static void canon_line(enum dkim_canon c, const char *line, size_t content, struct canon_state *st,
                       struct body_sink *s)
{
    if (c == DKIM_CANON_RELAXED) {
        /* RFC 6376 3.4.4: no WSP at line ends, runs of WSP to one SP. */
        while (content > 0 && is_wsp(line[content - 1]))
            content--;
    }
    if (content == 0) {
        st->empty++;
        return;
    }
    emit_crlfs(s, st->empty);
    st->empty = 0;
    st->any = true;
    if (c == DKIM_CANON_SIMPLE) {
        emit(s, line, content);
    } else {
        size_t i = 0;
        while (i < content) {
            size_t j = i;
            while (j < content && !is_wsp(line[j]))
                j++;
            emit(s, line + i, j - i);
            if (j < content) {
                emit(s, " ", 1);
                while (j < content && is_wsp(line[j]))
                    j++;
            }
            i = j;
        }
    }
    /* A last line without CRLF gets one (3.4.3, 3.4.4). */
    emit(s, "\r\n", 2);
}

/* The line [p, e) (ending in CRLF, or the body's last line without one). */
static void canon_span(enum dkim_canon c, const char *p, size_t n, struct canon_state *st,
                       struct body_sink *s)
{
    if (n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n')
        n -= 2;
    canon_line(c, p, n, st, s);
}

static void canon_end(enum dkim_canon c, const struct canon_state *st, struct body_sink *s)
{
    /* Simple: an empty body is one CRLF (3.4.3). Relaxed: it stays empty. */
    if (!st->any && c == DKIM_CANON_SIMPLE)
        emit(s, "\r\n", 2);
}

static void canon_body(enum dkim_canon c, const char *body, size_t len, struct body_sink *s)
{
    struct canon_state st = {0};
    size_t p = 0;
    while (p < len) {
        size_t e = line_end(body, len, p);
        canon_span(c, body + p, e - p, &st, s);
        p = e;
    }
    canon_end(c, &st, s);
}

int dkim_canon_body(enum dkim_canon c, const char *body, size_t len, struct buf *out)
{
    struct body_sink s = {.out = out, .remaining = -1};
    canon_body(c, body, len, &s);
    return s.rc;
}

int dkim_body_hash(enum dkim_canon c, const char *body, size_t len, int64_t limit, uint8_t out[32],
                   uint64_t *canon_len)
{
    wc_Sha256 sha;
    if (wc_InitSha256(&sha) != 0)
        return ERR_INVAL;
    struct body_sink s = {.sha = &sha, .remaining = limit};
    canon_body(c, body, len, &s);
    if (s.rc == 0 && wc_Sha256Final(&sha, out) != 0)
        s.rc = ERR_INVAL;
    wc_Sha256Free(&sha);
    if (canon_len)
        *canon_len = s.total;
    return s.rc;
}

/* ---- the body hash, piece by piece -------------------------------------------- */

struct dkim_bh {
    enum dkim_canon c;
    wc_Sha256 sha;
    struct body_sink sink;
    struct canon_state st;
    struct buf line; /* the line not yet ended by CRLF */
};

struct dkim_bh *dkim_bh_new(enum dkim_canon c, int64_t limit)
{
    struct dkim_bh *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    if (wc_InitSha256(&b->sha) != 0) {
        free(b);
        return NULL;
    }
    b->c = c;
    b->sink = (struct body_sink){.sha = &b->sha, .remaining = limit};
    buf_init(&b->line, SIZE_MAX / 2);
    return b;
}

/* Does the held line end in CR, so that an LF in front of the next piece
 * ends it? */
static bool held_cr(const struct dkim_bh *b)
{
    return b->line.len > 0 && b->line.data[b->line.len - 1] == '\r';
}

int dkim_bh_feed(struct dkim_bh *b, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && b->sink.rc == 0) {
        size_t e;
        if (held_cr(b) && p[i] == '\n') {
            e = i + 1; /* a CRLF split between two pieces */
        } else {
            e = line_end(p, n, i);
            bool ended = e - i >= 2 && p[e - 2] == '\r' && p[e - 1] == '\n';
            if (!ended) {
                /* The rest is a line still open: hold it. */
                if (buf_append(&b->line, p + i, n - i) != 0)
                    return ERR_NOMEM;
                return 0;
            }
        }
        if (b->line.len > 0) {
            if (buf_append(&b->line, p + i, e - i) != 0)
                return ERR_NOMEM;
            canon_span(b->c, b->line.data, b->line.len, &b->st, &b->sink);
            buf_reset(&b->line);
        } else {
            canon_span(b->c, p + i, e - i, &b->st, &b->sink);
        }
        i = e;
    }
    return b->sink.rc;
}

int dkim_bh_final(struct dkim_bh *b, uint8_t out[32], uint64_t *canon_len)
{
    if (b->line.len > 0)
        canon_span(b->c, b->line.data, b->line.len, &b->st, &b->sink);
    buf_reset(&b->line);
    canon_end(b->c, &b->st, &b->sink);
    if (b->sink.rc == 0 && wc_Sha256Final(&b->sha, out) != 0)
        b->sink.rc = ERR_INVAL;
    if (canon_len)
        *canon_len = b->sink.total;
    return b->sink.rc;
}

void dkim_bh_free(struct dkim_bh *b)
{
    if (!b)
        return;
    wc_Sha256Free(&b->sha);
    buf_free(&b->line);
    free(b);
}
