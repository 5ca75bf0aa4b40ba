/*
 * record.c - the queue's hand-written binary record codec and queue IDs.
 *
 * Invariants:
 *  - Every read is bounds-checked against the value's length; a value that
 *    is too short, too long, of another type or format version, or carries
 *    an out-of-range field decodes to ERR_CORRUPT, never a crash.
 *  - Decoded strings never contain NUL, so callers may copy them into C
 *    strings without surprises.
 *  - IDs are Crockford base32 (no I, L, O, U), most significant bits first,
 *    so string order is numeric order.
 */
#include "queue_int.h"

#include <string.h>

/* ---- big-endian helpers --------------------------------------------------- */

void qkey_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void qkey_put_u64(uint8_t *p, uint64_t v)
{
    qkey_put_u32(p, (uint32_t)(v >> 32));
    qkey_put_u32(p + 4, (uint32_t)v);
}

uint32_t qkey_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

uint64_t qkey_get_u64(const uint8_t *p)
{
    return (uint64_t)qkey_get_u32(p) << 32 | qkey_get_u32(p + 4);
}

struct view qrec_view(const char *s)
{
    struct view v = {s ? s : "", s ? strlen(s) : 0};
    return v;
}

/* ---- encoder ------------------------------------------------------------- */

struct enc {
    struct buf *b;
    int err;
};

static void put_bytes(struct enc *e, const void *p, size_t n)
{
    if (e->err == 0)
        e->err = buf_append(e->b, p, n);
}

static void put_u8(struct enc *e, uint8_t v)
{
    put_bytes(e, &v, 1);
}

static void put_u32(struct enc *e, uint32_t v)
{
    uint8_t t[4];
    qkey_put_u32(t, v);
    put_bytes(e, t, 4);
}

static void put_u64(struct enc *e, uint64_t v)
{
    uint8_t t[8];
    qkey_put_u64(t, v);
    put_bytes(e, t, 8);
}

static void put_str(struct enc *e, struct view v)
{
    if (e->err)
        return;
    if (v.len > QREC_STR_MAX || (v.len && memchr(v.ptr, 0, v.len))) {
        e->err = ERR_INVAL;
        return;
    }
    put_u32(e, (uint32_t)v.len);
    put_bytes(e, v.ptr, v.len);
}

static void put_head(struct enc *e, enum qrec_type t)
{
    put_u8(e, QREC_VERSION);
    put_u8(e, (uint8_t)t);
}

/* On error the buffer is put back to its length before the call. */
static int enc_finish(struct enc *e, size_t start)
{
    if (e->err && e->b->len > start)
        e->b->len = start, e->b->data[start] = 0;
    return e->err;
}

static void put_result(struct enc *e, const struct qrec_result *r)
{
    put_u32(e, (uint32_t)r->code);
    put_u64(e, (uint64_t)r->when_ms);
    put_str(e, r->dsn);
    put_str(e, r->text);
    put_str(e, r->mx);
    put_str(e, r->ip);
    put_str(e, r->tls);
    put_str(e, r->sts_mode);
    put_str(e, r->sts_id);
}

int qrec_meta_encode(const struct qrec_meta *m, struct buf *out)
{
    struct enc e = {out, 0};
    size_t start = out->len;
    put_head(&e, QREC_META);
    put_u32(&e, m->layout);
    put_u64(&e, (uint64_t)m->created_ms);
    put_u64(&e, m->id_ms);
    put_u32(&e, m->id_ctr);
    return enc_finish(&e, start);
}

int qrec_msg_encode(const struct qrec_msg *m, struct buf *out)
{
    struct enc e = {out, 0};
    size_t start = out->len;
    put_head(&e, QREC_MSG);
    put_u64(&e, (uint64_t)m->arrival_ms);
    put_u64(&e, m->size);
    put_u32(&e, m->n_chunks);
    put_u32(&e, m->n_rcpts);
    put_u32(&e, m->n_open);
    put_u8(&e, m->ret);
    put_u32(&e, m->flags);
    put_str(&e, m->sender);
    put_str(&e, m->client_name);
    put_str(&e, m->client_addr);
    put_str(&e, m->helo);
    put_str(&e, m->auth_user);
    put_str(&e, m->tls);
    put_str(&e, m->envid);
    return enc_finish(&e, start);
}

int qrec_rcpt_encode(const struct qrec_rcpt *r, struct buf *out)
{
    struct enc e = {out, 0};
    size_t start = out->len;
    bool v1 = r->version == 1 && r->n_hist == 0;
    if (r->n_hist > QREC_HIST_MAX)
        return ERR_INVAL;
    put_u8(&e, v1 ? 1 : QREC_RCPT_VERSION);
    put_u8(&e, QREC_RCPT);
    put_u8(&e, r->state);
    put_u8(&e, r->notify);
    put_u32(&e, r->attempts);
    put_u64(&e, (uint64_t)r->next_ms);
    put_str(&e, r->addr);
    put_str(&e, r->orcpt);
    put_u8(&e, r->has_result ? 1 : 0);
    if (r->has_result)
        put_result(&e, &r->last);
    if (!v1) {
        put_u8(&e, r->n_hist);
        put_bytes(&e, r->hist.ptr, r->n_hist ? r->hist.len : 0);
    }
    return enc_finish(&e, start);
}

int qrec_result_encode(const struct qrec_result *r, struct buf *out)
{
    struct enc e = {out, 0};
    size_t start = out->len;
    put_head(&e, QREC_RESULT);
    put_result(&e, r);
    return enc_finish(&e, start);
}

/* ---- decoder ------------------------------------------------------------- */

struct dec {
    const uint8_t *p;
    size_t n;
    size_t off;
    bool bad;
};

static const uint8_t *take(struct dec *d, size_t n)
{
    if (d->bad || d->n - d->off < n) {
        d->bad = true;
        return NULL;
    }
    const uint8_t *p = d->p + d->off;
    d->off += n;
    return p;
}

static uint8_t get_u8(struct dec *d)
{
    const uint8_t *p = take(d, 1);
    return p ? p[0] : 0;
}

static uint32_t get_u32(struct dec *d)
{
    const uint8_t *p = take(d, 4);
    return p ? qkey_get_u32(p) : 0;
}

static uint64_t get_u64(struct dec *d)
{
    const uint8_t *p = take(d, 8);
    return p ? qkey_get_u64(p) : 0;
}

static struct view get_str(struct dec *d)
{
    struct view v = {"", 0};
    uint32_t len = get_u32(d);
    if (d->bad)
        return v;
    if (len > QREC_STR_MAX) {
        d->bad = true;
        return v;
    }
    const uint8_t *p = take(d, len);
    if (!p)
        return v;
    if (len && memchr(p, 0, len)) {
        d->bad = true;
        return v;
    }
    v.ptr = (const char *)p;
    v.len = len;
    return v;
}

static void get_head(struct dec *d, enum qrec_type t)
{
    uint8_t ver = get_u8(d);
    uint8_t type = get_u8(d);
    if (ver != QREC_VERSION || type != (uint8_t)t)
        d->bad = true;
}

/* A whole value, nothing left over. */
static int dec_finish(const struct dec *d)
{
    return (d->bad || d->off != d->n) ? ERR_CORRUPT : 0;
}

static void get_result(struct dec *d, struct qrec_result *r)
{
    r->code = (int32_t)get_u32(d);
    r->when_ms = (int64_t)get_u64(d);
    r->dsn = get_str(d);
    r->text = get_str(d);
    r->mx = get_str(d);
    r->ip = get_str(d);
    r->tls = get_str(d);
    r->sts_mode = get_str(d);
    r->sts_id = get_str(d);
    if (r->code < 0 || r->code > 999)
        d->bad = true;
}

int qrec_meta_decode(const void *p, size_t n, struct qrec_meta *m)
{
    struct dec d = {p, n, 0, false};
    memset(m, 0, sizeof(*m));
    get_head(&d, QREC_META);
    m->layout = get_u32(&d);
    m->created_ms = (int64_t)get_u64(&d);
    m->id_ms = get_u64(&d);
    m->id_ctr = get_u32(&d);
    if (m->id_ms >> 48)
        d.bad = true;
    return dec_finish(&d);
}

/* The chunk count a body of size needs: whole chunks, or (QREC_F_PREFIX) a
 * prefix chunk of at most QUEUE_CHUNK octets and whole chunks after it. */
static bool chunks_ok(const struct qrec_msg *m)
{
    uint64_t plain = (m->size + QUEUE_CHUNK - 1) / QUEUE_CHUNK;
    if (!(m->flags & QREC_F_PREFIX))
        return m->n_chunks == plain;
    return m->n_chunks >= 1 && m->n_chunks <= plain + 1;
}

int qrec_msg_decode(const void *p, size_t n, struct qrec_msg *m)
{
    struct dec d = {p, n, 0, false};
    memset(m, 0, sizeof(*m));
    get_head(&d, QREC_MSG);
    m->arrival_ms = (int64_t)get_u64(&d);
    m->size = get_u64(&d);
    m->n_chunks = get_u32(&d);
    m->n_rcpts = get_u32(&d);
    m->n_open = get_u32(&d);
    m->ret = get_u8(&d);
    m->flags = get_u32(&d);
    m->sender = get_str(&d);
    m->client_name = get_str(&d);
    m->client_addr = get_str(&d);
    m->helo = get_str(&d);
    m->auth_user = get_str(&d);
    m->tls = get_str(&d);
    m->envid = get_str(&d);
    if (m->ret > QUEUE_RET_HDRS || m->n_open > m->n_rcpts || m->n_rcpts == 0 || !chunks_ok(m) ||
        m->arrival_ms < 0)
        d.bad = true;
    return dec_finish(&d);
}

int qrec_rcpt_decode(const void *p, size_t n, struct qrec_rcpt *r)
{
    struct dec d = {p, n, 0, false};
    memset(r, 0, sizeof(*r));
    r->version = get_u8(&d);
    if (get_u8(&d) != QREC_RCPT || (r->version != 1 && r->version != QREC_RCPT_VERSION))
        d.bad = true;
    r->state = get_u8(&d);
    r->notify = get_u8(&d);
    r->attempts = get_u32(&d);
    r->next_ms = (int64_t)get_u64(&d);
    r->addr = get_str(&d);
    r->orcpt = get_str(&d);
    uint8_t has = get_u8(&d);
    if (has > 1)
        d.bad = true;
    r->has_result = has == 1;
    if (r->has_result)
        get_result(&d, &r->last);
    if (r->version == QREC_RCPT_VERSION) {
        r->n_hist = get_u8(&d);
        if (r->n_hist > QREC_HIST_MAX)
            d.bad = true;
        size_t at = d.off;
        for (unsigned i = 0; i < r->n_hist && !d.bad; i++) {
            struct qrec_result h;
            get_result(&d, &h);
        }
        r->hist.ptr = d.bad ? "" : (const char *)d.p + at;
        r->hist.len = d.bad ? 0 : d.off - at;
    }
    if (r->state > QUEUE_RCPT_BOUNCED || r->notify > 0x0f || r->next_ms < 0)
        d.bad = true;
    return dec_finish(&d);
}

int qrec_hist_get(const struct qrec_rcpt *r, size_t i, struct qrec_result *out)
{
    if (i >= r->n_hist)
        return ERR_INVAL;
    struct dec d = {(const uint8_t *)r->hist.ptr, r->hist.len, 0, false};
    for (size_t k = 0; k <= i && !d.bad; k++)
        get_result(&d, out);
    return d.bad ? ERR_CORRUPT : 0;
}

int qrec_hist_push(const struct qrec_rcpt *r, const struct qrec_result *add, struct buf *out,
                   uint8_t *n)
{
    struct enc e = {out, 0};
    size_t start = out->len;
    /* n may point into r: count apart and store at the end. */
    size_t skip = r->n_hist >= QREC_HIST_MAX ? (size_t)r->n_hist - QREC_HIST_MAX + 1 : 0;
    uint8_t count = 0;
    for (size_t i = skip; i < r->n_hist && !e.err; i++) {
        struct qrec_result h;
        e.err = qrec_hist_get(r, i, &h);
        if (!e.err)
            put_result(&e, &h);
        count++;
    }
    struct qrec_result a = *add;
    if (a.text.len > QREC_HIST_TEXT_MAX) {
        /* Cut on a UTF-8 character boundary. */
        size_t len = QREC_HIST_TEXT_MAX;
        while (len > 0 && ((unsigned char)a.text.ptr[len] & 0xc0) == 0x80)
            len--;
        a.text.len = len;
    }
    put_result(&e, &a);
    count++;
    int err = enc_finish(&e, start);
    if (!err)
        *n = count;
    return err;
}

int qrec_result_decode(const void *p, size_t n, struct qrec_result *r)
{
    struct dec d = {p, n, 0, false};
    memset(r, 0, sizeof(*r));
    get_head(&d, QREC_RESULT);
    get_result(&d, r);
    return dec_finish(&d);
}

/* ---- queue IDs ----------------------------------------------------------- */

static const char qid_alpha[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

void qid_encode(uint64_t ms, uint32_t ctr, char out[QUEUE_ID_LEN + 1])
{
    /* 80 bits: ms (48) then ctr (32), 5 bits per character. */
    uint64_t hi = ms & 0xffffffffffffull; /* top 48 bits of the 80 */
    uint32_t lo = ctr;
    for (int i = QUEUE_ID_LEN - 1; i >= 0; i--) {
        unsigned v = lo & 31u;
        lo = (lo >> 5) | (uint32_t)((hi & 31u) << 27);
        hi >>= 5;
        out[i] = qid_alpha[v];
    }
    out[QUEUE_ID_LEN] = 0;
}

static int qid_digit(char c)
{
    const char *p = c ? strchr(qid_alpha, c) : NULL;
    return p ? (int)(p - qid_alpha) : -1;
}

int qid_decode(const char *s, size_t n, uint64_t *ms, uint32_t *ctr)
{
    if (n != QUEUE_ID_LEN)
        return ERR_INVAL;
    uint64_t hi = 0;
    uint32_t lo = 0;
    for (size_t i = 0; i < QUEUE_ID_LEN; i++) {
        int v = qid_digit(s[i]);
        if (v < 0)
            return ERR_INVAL;
        hi = (hi << 5) | (lo >> 27);
        lo = (lo << 5) | (uint32_t)v;
    }
    if (hi >> 48)
        return ERR_INVAL;
    if (ms)
        *ms = hi;
    if (ctr)
        *ctr = lo;
    return 0;
}

bool queue_id_valid(const char *s)
{
    return s && strlen(s) == QUEUE_ID_LEN && qid_decode(s, QUEUE_ID_LEN, NULL, NULL) == 0;
}

const char *queue_rcpt_state_name(int state)
{
    static const char *const names[] = {"queued", "active",    "deferred",
                                        "held",   "delivered", "bounced"};
    if (state < 0 || state > QUEUE_RCPT_BOUNCED)
        return "unknown";
    return names[state];
}
