/*
 * writer.c - the queue's writer thread and every request that changes the
 * queue: submit, lease, delivered, defer, bounce, unlease, hold, release,
 * retry, remove, and what the requests of a staged submission write (the
 * loop-thread side of a stage is in stage.c).
 *
 * Group commit: the loop thread collects the requests of one loop iteration
 * (q->staged) and hands them over together just before the loop blocks (a
 * uv_prepare handle, active only while something is staged), appending
 * them to q->pending with one lock and one signal: under load that is one
 * wake-up of the writer per iteration instead of one per request, and an
 * idle relay adds no delay, since the handoff runs before the loop sleeps. The writer takes
 * everything pending (bounded by GROUP_MAX requests and GROUP_BYTES of body), applies it in ONE
 * write transaction and commits it. Once the group is durable (its meta page
 * synced: see writer_main) the requests are moved to q->done and the loop
 * woken with uv_async_send(); their callbacks run there.
 *
 * Failure isolation: if anything in a group fails, the transaction is
 * aborted (nothing of it is visible) and each request of the group is run
 * again in its own transaction, so one bad request never fails another.
 * MDB_MAP_FULL aborts, grows the map (doubling, up to max_map_size) and
 * retries; past the maximum it is ERR_FULL, as is ENOSPC/EDQUOT/EFBIG.
 *
 * Values read in a write transaction are valid only until the next update,
 * so every request decodes what it needs and encodes the new records into
 * its own buffers before it writes anything.
 */
#include "queue_private.h"

#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define GROUP_MAX 2048
#define GROUP_BYTES (64u << 20)
/* Bytes committed between two drops of the map's page table entries. */
#define UNMAP_EVERY (8u << 20)

/* The context of one write transaction. */
struct wtx {
    struct queue *q;
    MDB_txn *txn;
    bool map_full;
    bool id_used;
};

/* ---- small LMDB wrappers -------------------------------------------------- */

static int werr(struct wtx *w, int rc)
{
    if (rc == MDB_MAP_FULL)
        w->map_full = true;
    if (rc)
        return queue_mdb_err(rc);
    return 0;
}

static int wput(struct wtx *w, enum qdb db, const void *k, size_t kn, const void *v, size_t vn,
                unsigned flags)
{
    MDB_val key = {kn, (void *)k}, val = {vn, (void *)v};
    return werr(w, mdb_put(w->txn, w->q->dbi[db], &key, &val, flags));
}

/* Delete; a missing key is fine. */
static int wdel(struct wtx *w, enum qdb db, const void *k, size_t kn)
{
    MDB_val key = {kn, (void *)k};
    int rc = mdb_del(w->txn, w->q->dbi[db], &key, NULL);
    return rc == MDB_NOTFOUND ? 0 : werr(w, rc);
}

static int wget(struct wtx *w, enum qdb db, const void *k, size_t kn, MDB_val *v)
{
    MDB_val key = {kn, (void *)k};
    return werr(w, mdb_get(w->txn, w->q->dbi[db], &key, v));
}

static void rcpt_key(uint8_t *kb, const char *id, uint32_t idx)
{
    memcpy(kb, id, QUEUE_ID_LEN);
    qkey_put_u32(kb + QUEUE_ID_LEN, idx);
}

static void sched_key(uint8_t *kb, int64_t when, const char *id, uint32_t idx)
{
    qkey_put_u64(kb, (uint64_t)(when < 0 ? 0 : when));
    rcpt_key(kb + 8, id, idx);
}

static bool scheduled(uint8_t state)
{
    return state == QUEUE_RCPT_QUEUED || state == QUEUE_RCPT_DEFERRED || state == QUEUE_RCPT_ACTIVE;
}

static bool final_state(uint8_t state)
{
    return state == QUEUE_RCPT_DELIVERED || state == QUEUE_RCPT_BOUNCED;
}

static uint64_t rng_next(struct queue *q)
{
    return splitmix64(&q->rng); /* jitter only, not security */
}

/* ---- recipient state changes ---------------------------------------------- */

/*
 * Write recipient idx of message id with its new record r, moving its
 * schedule and lease entries from the old state/next to the new ones.
 * r's views must not point into LMDB memory (encode happens first).
 */
/* A lease entry is kept while an attempt is in flight: ACTIVE, or HELD
 * while the attempt that was in flight has not reported (next_ms != 0). */
static bool leased(uint8_t state, int64_t next_ms)
{
    return state == QUEUE_RCPT_ACTIVE || (state == QUEUE_RCPT_HELD && next_ms != 0);
}

static int rcpt_write(struct wtx *w, const char *id, uint32_t idx, uint8_t old_state,
                      int64_t old_next, const struct qrec_rcpt *r)
{
    struct buf b;
    buf_init(&b, SIZE_MAX / 2);
    int err = qrec_rcpt_encode(r, &b);
    uint8_t rk[QKEY_RCPT_LEN], sk[QKEY_SCHED_LEN];
    rcpt_key(rk, id, idx);
    if (!err && scheduled(old_state)) {
        sched_key(sk, old_next, id, idx);
        err = wdel(w, QDB_SCHED, sk, sizeof(sk));
    }
    bool had_lease = leased(old_state, old_next), has_lease = leased(r->state, r->next_ms);
    if (!err && had_lease && !has_lease)
        err = wdel(w, QDB_LEASE, rk, sizeof(rk));
    if (!err && scheduled(r->state)) {
        sched_key(sk, r->next_ms, id, idx);
        err = wput(w, QDB_SCHED, sk, sizeof(sk), "", 0, 0);
    }
    if (!err && has_lease && !had_lease)
        err = wput(w, QDB_LEASE, rk, sizeof(rk), "", 0, 0);
    if (!err)
        err = wput(w, QDB_RCPT, rk, sizeof(rk), b.data, b.len, 0);
    buf_free(&b);
    return err;
}

/* A copy of a recipient record that survives writes. */
struct rcopy {
    uint32_t idx;
    void *raw;
    size_t len;
    struct qrec_rcpt r;
    bool bad; /* does not decode (tolerant loads only) */
};

static void rcopies_free(struct rcopy *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(a[i].raw);
    free(a);
}

static int rcopy_one(struct rcopy *c, uint32_t idx, const MDB_val *v)
{
    c->idx = idx;
    c->raw = malloc(v->mv_size ? v->mv_size : 1);
    if (!c->raw)
        return ERR_NOMEM;
    memcpy(c->raw, v->mv_data, v->mv_size);
    c->len = v->mv_size;
    return qrec_rcpt_decode(c->raw, c->len, &c->r);
}

/* Copy every recipient of message id. tolerant: a record that does not
 * decode is kept with bad set instead of failing the whole load. */
static int rcopies_load(struct wtx *w, const char *id, bool tolerant, struct rcopy **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    MDB_cursor *cur;
    int err = werr(w, mdb_cursor_open(w->txn, w->q->dbi[QDB_RCPT], &cur));
    if (err)
        return err;
    uint8_t kb[QKEY_RCPT_LEN];
    rcpt_key(kb, id, 0);
    MDB_val k = {sizeof(kb), kb}, v;
    size_t cap = 0;
    struct rcopy *a = NULL;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == QKEY_RCPT_LEN && memcmp(k.mv_data, id, QUEUE_ID_LEN) == 0) {
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct rcopy *na = realloc(a, ncap * sizeof(*a));
            if (!na) {
                err = ERR_NOMEM;
                break;
            }
            a = na;
            cap = ncap;
        }
        err = rcopy_one(&a[*n], qkey_get_u32((const uint8_t *)k.mv_data + QUEUE_ID_LEN), &v);
        a[*n].bad = err == ERR_CORRUPT;
        if (a[*n].bad && tolerant)
            err = 0;
        if (a[*n].raw)
            (*n)++;
        if (err)
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (!err && rc && rc != MDB_NOTFOUND)
        err = werr(w, rc);
    if (err) {
        rcopies_free(a, *n);
        *n = 0;
        return err;
    }
    *out = a;
    return 0;
}

/* Decode the MSG record of id into m, with its raw bytes copied to *raw. */
static int msg_load(struct wtx *w, const char *id, struct qrec_msg *m, void **raw)
{
    MDB_val v;
    *raw = NULL;
    int err = wget(w, QDB_MSG, id, QUEUE_ID_LEN, &v);
    if (err)
        return err;
    *raw = malloc(v.mv_size ? v.mv_size : 1);
    if (!*raw)
        return ERR_NOMEM;
    memcpy(*raw, v.mv_data, v.mv_size);
    return qrec_msg_decode(*raw, v.mv_size, m);
}

static int msg_store(struct wtx *w, const char *id, const struct qrec_msg *m)
{
    struct buf b;
    buf_init(&b, SIZE_MAX / 2);
    int err = qrec_msg_encode(m, &b);
    if (!err)
        err = wput(w, QDB_MSG, id, QUEUE_ID_LEN, b.data, b.len, 0);
    buf_free(&b);
    return err;
}

/* Delete every body chunk stored under id (a message's, or a stage's). */
static int body_delete(struct wtx *w, const char *id)
{
    /* Collect the chunk numbers under this ID, then delete. */
    uint8_t rk[QKEY_RCPT_LEN];
    uint32_t *chunks = NULL;
    size_t nc = 0, cap = 0;
    MDB_cursor *cur;
    int err = werr(w, mdb_cursor_open(w->txn, w->q->dbi[QDB_BODY], &cur));
    if (!err) {
        rcpt_key(rk, id, 0);
        MDB_val k = {sizeof(rk), rk}, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && k.mv_size == QKEY_RCPT_LEN && memcmp(k.mv_data, id, QUEUE_ID_LEN) == 0) {
            if (nc == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                uint32_t *na = realloc(chunks, ncap * sizeof(*na));
                if (!na) {
                    err = ERR_NOMEM;
                    break;
                }
                chunks = na;
                cap = ncap;
            }
            chunks[nc++] = qkey_get_u32((const uint8_t *)k.mv_data + QUEUE_ID_LEN);
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        if (!err && rc && rc != MDB_NOTFOUND)
            err = werr(w, rc);
        mdb_cursor_close(cur);
    }
    for (size_t i = 0; i < nc && !err; i++) {
        rcpt_key(rk, id, chunks[i]);
        err = wdel(w, QDB_BODY, rk, sizeof(rk));
    }
    free(chunks);
    return err;
}

/*
 * Delete message id and everything that belongs to it. Works from the keys,
 * not from the MSG record, so an operator can remove a message whose
 * records no longer decode: a recipient that does not decode leaves at most
 * a schedule entry behind, which the next lease drops.
 */
static int msg_delete(struct wtx *w, const char *id)
{
    struct rcopy *a;
    size_t n;
    int err = rcopies_load(w, id, true, &a, &n);
    if (err)
        return err;
    uint8_t rk[QKEY_RCPT_LEN], sk[QKEY_SCHED_LEN];
    for (size_t i = 0; i < n && !err; i++) {
        rcpt_key(rk, id, a[i].idx);
        if (!a[i].bad && scheduled(a[i].r.state)) {
            sched_key(sk, a[i].r.next_ms, id, a[i].idx);
            err = wdel(w, QDB_SCHED, sk, sizeof(sk));
        }
        if (!err)
            err = wdel(w, QDB_LEASE, rk, sizeof(rk));
        if (!err)
            err = wdel(w, QDB_RCPT, rk, sizeof(rk));
    }
    rcopies_free(a, n);
    if (!err)
        err = body_delete(w, id);
    if (!err)
        err = wdel(w, QDB_MSG, id, QUEUE_ID_LEN);
    return err;
}

static int64_t lifetime_end(const struct queue *q, const struct qrec_msg *m)
{
    int64_t life = m->sender.len == 0 ? q->opt.bounce_lifetime : q->opt.maximal_lifetime;
    return m->arrival_ms + life * 1000;
}

static int64_t backoff_ms(struct queue *q, uint32_t attempts)
{
    int64_t min = q->opt.minimal_backoff * 1000, max = q->opt.maximal_backoff * 1000;
    int64_t d = min;
    for (uint32_t i = 1; i < attempts && d < max; i++)
        d *= 2;
    if (d > max)
        d = max;
    /* Up to a quarter less, so recipients deferred together spread out. */
    d -= (int64_t)(rng_next(q) % (uint64_t)(d / 4 + 1));
    return d < min ? min : d;
}

/* ---- the requests ------------------------------------------------------- */

/* A new message ID: never issued before by this queue (the high-water mark
 * is stored with the transaction). */
static void new_id(struct wtx *w, int64_t now_ms, char id[QUEUE_ID_LEN + 1])
{
    struct queue *q = w->q;
    uint64_t now = now_ms < 0 ? 0 : (uint64_t)now_ms;
    if (now > q->id_ms) {
        q->id_ms = now & 0xffffffffffffull;
        q->id_ctr = (uint32_t)(rng_next(q) & 0x3fffffffu);
    } else if (q->id_ctr == UINT32_MAX) {
        q->id_ms++;
        q->id_ctr = 0;
    } else {
        q->id_ctr++;
    }
    qid_encode(q->id_ms, q->id_ctr, id);
    w->id_used = true;
}

/* The recipients of a new message (r->rcpts) and their schedule entries. */
static int rcpts_put(struct wtx *w, const struct qreq *r, unsigned flags)
{
    uint8_t kb[QKEY_RCPT_LEN], sk[QKEY_SCHED_LEN];
    const uint8_t *p = (const uint8_t *)r->rcpts.data;
    int err = 0;
    for (uint32_t i = 0; !err && i < r->n_rcpts; i++) {
        uint32_t len = qkey_get_u32(p);
        rcpt_key(kb, r->id, i);
        err = wput(w, QDB_RCPT, kb, sizeof(kb), p + 4, len, flags);
        if (!err) {
            sched_key(sk, r->now_ms, r->id, i);
            err = wput(w, QDB_SCHED, sk, sizeof(sk), "", 0, 0);
        }
        p += 4 + len;
    }
    return err;
}

static int apply_submit(struct wtx *w, struct qreq *r)
{
    new_id(w, r->now_ms, r->id);
    /* IDs only grow, so every key of this message sorts after all
     * existing ones: MDB_APPEND is correct and fast (and fails loudly with
     * MDB_KEYEXIST if that were ever not so). */
    int err = wput(w, QDB_MSG, r->id, QUEUE_ID_LEN, r->rec.data, r->rec.len, MDB_APPEND);
    uint8_t kb[QKEY_RCPT_LEN];
    const char *body = r->body;
    uint32_t chunk = 0;
    for (size_t off = 0; !err && off < r->body_len; off += QUEUE_CHUNK, chunk++) {
        size_t n = r->body_len - off < QUEUE_CHUNK ? r->body_len - off : QUEUE_CHUNK;
        rcpt_key(kb, r->id, chunk);
        err = wput(w, QDB_BODY, kb, sizeof(kb), body + off, n, MDB_APPEND);
    }
    if (!err)
        err = rcpts_put(w, r, MDB_APPEND);
    return err;
}

/* ---- staged submissions --------------------------------------------------- */

static void stage_mark_key(uint8_t *kb, const char *id)
{
    memcpy(kb, QKEY_STAGE, QKEY_STAGE_LEN);
    memcpy(kb + QKEY_STAGE_LEN, id, QUEUE_ID_LEN);
}

/* The stage's ID, issued by its first request to be applied, and its
 * marker (written again by every request: a group that failed and was
 * rolled back may have taken the first one with it). The ID of a stage is
 * older than those issued after it, so none of its keys is appended. */
static int stage_begin(struct wtx *w, struct qreq *r)
{
    struct queue_stage *st = r->stage;
    if (st->werr)
        return st->werr;
    if (!st->id[0])
        new_id(w, r->now_ms, st->id);
    w->id_used = true; /* keep the high-water mark at least at this ID */
    memcpy(r->id, st->id, sizeof(r->id));
    uint8_t kb[QKEY_STAGE_LEN + QUEUE_ID_LEN];
    stage_mark_key(kb, st->id);
    return wput(w, QDB_META, kb, sizeof(kb), "", 0, 0);
}

static int put_chunk(struct wtx *w, const char *id, uint32_t chunk, const void *p, size_t n)
{
    uint8_t kb[QKEY_RCPT_LEN];
    rcpt_key(kb, id, chunk);
    return wput(w, QDB_BODY, kb, sizeof(kb), p, n, 0);
}

static int apply_stage_chunk(struct wtx *w, struct qreq *r)
{
    int err = stage_begin(w, r);
    if (!err)
        err = put_chunk(w, r->id, r->chunk, r->data.data, r->data.len);
    return err;
}

/* The record is the commit point: until it is written the chunks are
 * invisible, and the marker lets the next open remove them. */
static int apply_stage_commit(struct wtx *w, struct qreq *r)
{
    int err = stage_begin(w, r);
    if (!err)
        err = wput(w, QDB_MSG, r->id, QUEUE_ID_LEN, r->rec.data, r->rec.len, 0);
    if (!err)
        err = put_chunk(w, r->id, 0, r->data.data, r->prefix_len);
    if (!err && r->data.len > r->prefix_len)
        err = put_chunk(w, r->id, r->chunk, r->data.data + r->prefix_len,
                        r->data.len - r->prefix_len);
    if (!err)
        err = rcpts_put(w, r, 0);
    uint8_t kb[QKEY_STAGE_LEN + QUEUE_ID_LEN];
    stage_mark_key(kb, r->id);
    if (!err)
        err = wdel(w, QDB_META, kb, sizeof(kb));
    return err;
}

static int stage_purge(struct wtx *w, const char *id)
{
    uint8_t kb[QKEY_STAGE_LEN + QUEUE_ID_LEN];
    stage_mark_key(kb, id);
    int err = body_delete(w, id);
    if (!err)
        err = wdel(w, QDB_META, kb, sizeof(kb));
    return err;
}

static int apply_stage_abort(struct wtx *w, struct qreq *r)
{
    /* No request of the stage was applied: nothing was stored. */
    return r->stage->id[0] ? stage_purge(w, r->stage->id) : 0;
}

static int purge_stages(struct wtx *w)
{
    struct queue *q = w->q;
    MDB_cursor *cur;
    int err = werr(w, mdb_cursor_open(w->txn, q->dbi[QDB_META], &cur));
    if (err)
        return err;
    char(*ids)[QUEUE_ID_LEN + 1] = NULL;
    size_t n = 0, cap = 0;
    MDB_val k = {QKEY_STAGE_LEN, QKEY_STAGE}, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == QKEY_STAGE_LEN + QUEUE_ID_LEN &&
           memcmp(k.mv_data, QKEY_STAGE, QKEY_STAGE_LEN) == 0) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            void *na = realloc(ids, ncap * sizeof(*ids));
            if (!na) {
                err = ERR_NOMEM;
                break;
            }
            ids = na;
            cap = ncap;
        }
        memcpy(ids[n], (const char *)k.mv_data + QKEY_STAGE_LEN, QUEUE_ID_LEN);
        ids[n++][QUEUE_ID_LEN] = '\0';
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    for (size_t i = 0; i < n && !err; i++)
        err = stage_purge(w, ids[i]);
    free(ids);
    if (n && !err)
        log_info("queue", "%zu messages whose bodies were still arriving were removed", n);
    return err;
}

static void due_free_n(struct queue_due *due, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((void *)due[i].addr);
        free((void *)due[i].sender);
    }
    free(due);
}

void queue_due_free(struct queue_due *due)
{
    if (!due)
        return;
    size_t n = 0;
    while (due[n].addr)
        n++;
    due_free_n(due, n);
}

static char *vstr(struct view v)
{
    char *s = malloc(v.len + 1);
    if (s) {
        memcpy(s, v.ptr, v.len);
        s[v.len] = 0;
    }
    return s;
}

static int apply_lease(struct wtx *w, struct qreq *r)
{
    struct queue *q = w->q;
    if (r->due) {
        due_free_n(r->due, r->n_due);
        r->due = NULL;
    }
    r->n_due = 0;
    /* The array always has room for a terminating entry (addr NULL). */
    r->due = calloc(r->max + 1, sizeof(*r->due));
    if (!r->due)
        return ERR_NOMEM;
    if (r->max == 0)
        return 0;

    /* First collect the due keys, then change them: no cursor walks over
     * entries it is itself moving. */
    uint8_t(*keys)[QKEY_SCHED_LEN] = malloc(r->max * QKEY_SCHED_LEN);
    if (!keys)
        return ERR_NOMEM;
    size_t nk = 0;
    MDB_cursor *cur;
    int err = werr(w, mdb_cursor_open(w->txn, q->dbi[QDB_SCHED], &cur));
    if (!err) {
        MDB_val k, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        while (rc == 0 && nk < r->max) {
            if (k.mv_size != QKEY_SCHED_LEN) {
                err = ERR_CORRUPT;
                break;
            }
            if ((int64_t)qkey_get_u64(k.mv_data) > r->now_ms)
                break;
            memcpy(keys[nk++], k.mv_data, QKEY_SCHED_LEN);
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        if (!err && rc && rc != MDB_NOTFOUND)
            err = werr(w, rc);
        mdb_cursor_close(cur);
    }

    char last_id[QUEUE_ID_LEN + 1] = "";
    void *msg_raw = NULL;
    struct qrec_msg m;
    for (size_t i = 0; i < nk && !err; i++) {
        char id[QUEUE_ID_LEN + 1];
        memcpy(id, keys[i] + 8, QUEUE_ID_LEN);
        id[QUEUE_ID_LEN] = 0;
        uint32_t idx = qkey_get_u32(keys[i] + 8 + QUEUE_ID_LEN);
        uint8_t rk[QKEY_RCPT_LEN];
        rcpt_key(rk, id, idx);
        MDB_val v;
        struct rcopy c = {0};
        err = wget(w, QDB_RCPT, rk, sizeof(rk), &v);
        if (err == ERR_NOTFOUND) {
            /* A schedule entry without its recipient: drop it. */
            err = wdel(w, QDB_SCHED, keys[i], QKEY_SCHED_LEN);
            continue;
        }
        if (!err)
            err = rcopy_one(&c, idx, &v);
        if (err == ERR_CORRUPT) {
            /* Keep the record for the operator, but off the schedule so it
             * does not block every later lease. */
            log_err("queue", "%s: recipient %u does not decode; taken off the schedule", id, idx);
            free(c.raw);
            err = wdel(w, QDB_SCHED, keys[i], QKEY_SCHED_LEN);
            continue;
        }
        if (!err && (!scheduled(c.r.state) || (int64_t)qkey_get_u64(keys[i]) != c.r.next_ms)) {
            free(c.raw);
            err = wdel(w, QDB_SCHED, keys[i], QKEY_SCHED_LEN);
            continue;
        }
        if (!err && strcmp(id, last_id) != 0) {
            free(msg_raw);
            msg_raw = NULL;
            last_id[0] = 0;
            err = msg_load(w, id, &m, &msg_raw);
            if (!err)
                memcpy(last_id, id, sizeof(last_id));
        }
        if (err == ERR_CORRUPT || err == ERR_NOTFOUND) {
            /* Without its envelope the recipient cannot be routed: off the
             * schedule, kept for the operator (who can remove it). */
            log_err("queue", "%s: message record %s; recipient %u taken off the schedule", id,
                    err == ERR_CORRUPT ? "does not decode" : "is missing", idx);
            free(c.raw);
            err = wdel(w, QDB_SCHED, keys[i], QKEY_SCHED_LEN);
            continue;
        }
        if (err) {
            free(c.raw);
            break;
        }
        struct queue_due *d = &r->due[r->n_due];
        memcpy(d->id, id, sizeof(d->id));
        d->rcpt = idx;
        d->addr = vstr(c.r.addr);
        d->sender = vstr(m.sender);
        d->attempts = c.r.attempts;
        d->arrival_ms = m.arrival_ms;
        d->size = m.size;
        d->flags = m.flags & ~QREC_F_PREFIX;
        d->expired = r->now_ms >= lifetime_end(q, &m);
        if (!d->addr || !d->sender) {
            free((void *)d->addr);
            free((void *)d->sender);
            d->addr = NULL;
            free(c.raw);
            err = ERR_NOMEM;
            break;
        }
        r->n_due++;
        uint8_t old_state = c.r.state;
        int64_t old_next = c.r.next_ms;
        c.r.state = QUEUE_RCPT_ACTIVE;
        c.r.next_ms = r->now_ms + q->opt.lease_time * 1000;
        err = rcpt_write(w, id, idx, old_state, old_next, &c.r);
        free(c.raw);
    }
    free(msg_raw);
    free(keys);
    return err;
}

/* delivered, defer, bounce, unlease */
static int apply_report(struct wtx *w, struct qreq *r)
{
    struct queue *q = w->q;
    uint8_t rk[QKEY_RCPT_LEN];
    rcpt_key(rk, r->id, r->rcpt);
    MDB_val v;
    int err = wget(w, QDB_RCPT, rk, sizeof(rk), &v);
    if (err)
        return err;
    struct rcopy c = {0};
    void *msg_raw = NULL;
    struct qrec_msg m;
    struct buf hist;
    buf_init(&hist, SIZE_MAX / 2);
    err = rcopy_one(&c, r->rcpt, &v);
    if (!err)
        err = msg_load(w, r->id, &m, &msg_raw);
    if (!err && final_state(c.r.state))
        err = ERR_INVAL;
    if (err)
        goto out;

    uint8_t old_state = c.r.state;
    int64_t old_next = c.r.next_ms;
    if (r->type == R_UNLEASE) {
        if (old_state == QUEUE_RCPT_ACTIVE) {
            c.r.state = c.r.attempts ? QUEUE_RCPT_DEFERRED : QUEUE_RCPT_QUEUED;
            c.r.next_ms = r->when_ms > r->now_ms ? r->when_ms : r->now_ms;
            err = rcpt_write(w, r->id, r->rcpt, old_state, old_next, &c.r);
        } else if (old_state == QUEUE_RCPT_HELD && old_next != 0) {
            /* Held while in flight; the attempt is over without a result. */
            c.r.next_ms = 0;
            err = rcpt_write(w, r->id, r->rcpt, old_state, old_next, &c.r);
        }
        goto out;
    }
    if (r->rec.len) {
        /* The last result joins the history (bounded); the new one is last. */
        if (c.r.has_result) {
            err = qrec_hist_push(&c.r, &c.r.last, &hist, &c.r.n_hist);
            if (err)
                goto out;
            c.r.hist.ptr = hist.data;
            c.r.hist.len = hist.len;
        }
        err = qrec_result_decode(r->rec.data, r->rec.len, &c.r.last);
        if (err)
            goto out;
        c.r.has_result = true;
    }
    if (r->type == R_DEFER) {
        c.r.attempts++;
        if (old_state == QUEUE_RCPT_HELD) {
            c.r.next_ms = 0;
        } else {
            int64_t next = r->now_ms + backoff_ms(q, c.r.attempts);
            int64_t end = lifetime_end(q, &m);
            if (next > end)
                next = end > r->now_ms ? end : r->now_ms;
            c.r.state = QUEUE_RCPT_DEFERRED;
            c.r.next_ms = next;
        }
        err = rcpt_write(w, r->id, r->rcpt, old_state, old_next, &c.r);
        goto out;
    }
    /* delivered or bounced: final. */
    if (old_state == QUEUE_RCPT_ACTIVE)
        c.r.attempts++;
    c.r.state = r->type == R_DELIVERED ? QUEUE_RCPT_DELIVERED : QUEUE_RCPT_BOUNCED;
    c.r.next_ms = 0;
    if (m.n_open > 0)
        m.n_open--;
    if (m.n_open == 0) {
        err = msg_delete(w, r->id);
    } else {
        err = rcpt_write(w, r->id, r->rcpt, old_state, old_next, &c.r);
        if (!err)
            err = msg_store(w, r->id, &m);
    }
out:
    free(c.raw);
    free(msg_raw);
    buf_free(&hist);
    return err;
}

/* hold, release, retry (one message), remove */
static int apply_message_op(struct wtx *w, struct qreq *r, const char *id)
{
    if (r->type == R_REMOVE) {
        MDB_val v;
        int err = wget(w, QDB_MSG, id, QUEUE_ID_LEN, &v);
        return err ? err : msg_delete(w, id);
    }
    if (r->type == R_DELAY_WARNED) {
        /* A bit of the MSG record's flags: records written before it
         * existed read as "not warned". */
        void *raw = NULL;
        struct qrec_msg m;
        int err = msg_load(w, id, &m, &raw);
        if (!err && !(m.flags & QUEUE_F_DELAY_WARNED)) {
            m.flags |= QUEUE_F_DELAY_WARNED;
            err = msg_store(w, id, &m);
        }
        free(raw);
        return err;
    }
    void *msg_raw = NULL;
    struct qrec_msg m;
    int err = msg_load(w, id, &m, &msg_raw);
    if (err) {
        free(msg_raw);
        return err;
    }
    struct rcopy *a;
    size_t n;
    err = rcopies_load(w, id, false, &a, &n);
    for (size_t i = 0; i < n && !err; i++) {
        struct qrec_rcpt *c = &a[i].r;
        uint8_t old_state = c->state;
        int64_t old_next = c->next_ms;
        bool change = false;
        if (r->type == R_HOLD && scheduled(old_state)) {
            /* A recipient in flight keeps its lease end as next_ms: it is
             * held, and a release gives the lease back rather than making
             * it due now, so one recipient is never on two connections. */
            c->state = QUEUE_RCPT_HELD;
            c->next_ms = old_state == QUEUE_RCPT_ACTIVE ? old_next : 0;
            change = true;
        } else if (r->type == R_RELEASE && old_state == QUEUE_RCPT_HELD) {
            if (old_next > r->now_ms) {
                c->state = QUEUE_RCPT_ACTIVE;
            } else {
                c->state = c->attempts ? QUEUE_RCPT_DEFERRED : QUEUE_RCPT_QUEUED;
                c->next_ms = r->now_ms;
            }
            change = true;
        } else if (r->type == R_RETRY &&
                   (old_state == QUEUE_RCPT_QUEUED || old_state == QUEUE_RCPT_DEFERRED) &&
                   old_next > r->now_ms) {
            c->next_ms = r->now_ms;
            change = true;
        }
        if (change)
            err = rcpt_write(w, id, a[i].idx, old_state, old_next, c);
    }
    rcopies_free(a, n);
    free(msg_raw);
    return err;
}

static int apply_retry_all(struct wtx *w, struct qreq *r)
{
    /* Walk the schedule from now on; collect the message IDs first. */
    MDB_cursor *cur;
    int err = werr(w, mdb_cursor_open(w->txn, w->q->dbi[QDB_SCHED], &cur));
    if (err)
        return err;
    uint8_t start[8];
    qkey_put_u64(start, (uint64_t)r->now_ms + 1);
    MDB_val k = {sizeof(start), start}, v;
    char(*ids)[QUEUE_ID_LEN + 1] = NULL;
    size_t n = 0, cap = 0;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && !err) {
        if (k.mv_size != QKEY_SCHED_LEN) {
            err = ERR_CORRUPT;
            break;
        }
        const char *id = (const char *)k.mv_data + 8;
        bool seen = false;
        for (size_t i = 0; i < n && !seen; i++)
            seen = memcmp(ids[i], id, QUEUE_ID_LEN) == 0;
        if (!seen) {
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                void *na = realloc(ids, ncap * sizeof(*ids));
                if (!na) {
                    err = ERR_NOMEM;
                    break;
                }
                ids = na;
                cap = ncap;
            }
            memcpy(ids[n], id, QUEUE_ID_LEN);
            ids[n][QUEUE_ID_LEN] = 0;
            n++;
        }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (!err && rc && rc != MDB_NOTFOUND)
        err = werr(w, rc);
    for (size_t i = 0; i < n && !err; i++)
        err = apply_message_op(w, r, ids[i]);
    free(ids);
    return err;
}

static int apply(struct wtx *w, struct qreq *r)
{
    switch (r->type) {
    case R_SUBMIT:
        return apply_submit(w, r);
    case R_LEASE:
        return apply_lease(w, r);
    case R_DELIVERED:
    case R_DEFER:
    case R_BOUNCE:
    case R_UNLEASE:
        return apply_report(w, r);
    case R_RETRY:
        if (r->all)
            return apply_retry_all(w, r);
        return apply_message_op(w, r, r->id);
    case R_HOLD:
    case R_RELEASE:
    case R_REMOVE:
    case R_DELAY_WARNED:
        return apply_message_op(w, r, r->id);
    case R_STAGE_CHUNK:
        return apply_stage_chunk(w, r);
    case R_STAGE_COMMIT:
        return apply_stage_commit(w, r);
    case R_STAGE_ABORT:
        return apply_stage_abort(w, r);
    }
    return ERR_INVAL;
}

static int recover_leases(struct wtx *w)
{
    struct queue *q = w->q;
    MDB_cursor *cur;
    int err = werr(w, mdb_cursor_open(w->txn, q->dbi[QDB_LEASE], &cur));
    if (err)
        return err;
    uint8_t(*keys)[QKEY_RCPT_LEN] = NULL;
    size_t n = 0, cap = 0;
    MDB_val k, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (rc == 0) {
        if (k.mv_size != QKEY_RCPT_LEN) {
            err = ERR_CORRUPT;
            break;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            void *na = realloc(keys, ncap * QKEY_RCPT_LEN);
            if (!na) {
                err = ERR_NOMEM;
                break;
            }
            keys = na;
            cap = ncap;
        }
        memcpy(keys[n++], k.mv_data, QKEY_RCPT_LEN);
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    int64_t now = queue_now(q);
    for (size_t i = 0; i < n && !err; i++) {
        char id[QUEUE_ID_LEN + 1];
        memcpy(id, keys[i], QUEUE_ID_LEN);
        id[QUEUE_ID_LEN] = 0;
        uint32_t idx = qkey_get_u32(keys[i] + QUEUE_ID_LEN);
        struct rcopy c = {0};
        err = wget(w, QDB_RCPT, keys[i], QKEY_RCPT_LEN, &v);
        if (!err)
            err = rcopy_one(&c, idx, &v);
        if (!err && c.r.state == QUEUE_RCPT_ACTIVE) {
            int64_t old_next = c.r.next_ms;
            c.r.state = c.r.attempts ? QUEUE_RCPT_DEFERRED : QUEUE_RCPT_QUEUED;
            c.r.next_ms = now;
            err = rcpt_write(w, id, idx, QUEUE_RCPT_ACTIVE, old_next, &c.r);
        } else if (!err && c.r.state == QUEUE_RCPT_HELD && c.r.next_ms != 0) {
            /* Held while in flight: that attempt died with the process. */
            int64_t old_next = c.r.next_ms;
            c.r.next_ms = 0;
            err = rcpt_write(w, id, idx, QUEUE_RCPT_HELD, old_next, &c.r);
        } else if (!err || err == ERR_NOTFOUND || err == ERR_CORRUPT) {
            err = wdel(w, QDB_LEASE, keys[i], QKEY_RCPT_LEN);
        }
        free(c.raw);
    }
    free(keys);
    if (n && !err)
        log_info("queue", "%zu recipients that were in flight are due again", n);
    return err;
}

int queue_recover(struct queue *q, MDB_txn *txn, bool *map_full)
{
    struct wtx w = {.q = q, .txn = txn};
    int err = recover_leases(&w);
    if (!err)
        err = purge_stages(&w);
    *map_full = w.map_full;
    return err;
}

/* ---- transactions and the thread -------------------------------------------- */

int queue_grow_map(struct queue *q)
{
    if (q->map_size >= q->opt.max_map_size)
        return ERR_FULL;
    uint64_t size = q->map_size * 2;
    if (size > q->opt.max_map_size)
        size = q->opt.max_map_size;
    pthread_rwlock_wrlock(&q->resize);
    int rc = mdb_env_set_mapsize(q->env, (size_t)size);
    pthread_rwlock_unlock(&q->resize);
    if (rc) {
        log_err("queue", "cannot grow the map to %llu bytes: %s", (unsigned long long)size,
                mdb_strerror(rc));
        return ERR_FULL;
    }
    q->map_size = size;
    log_info("queue", "map grown to %llu MiB", (unsigned long long)(size >> 20));
    return 0;
}

static int put_meta(struct wtx *w)
{
    struct queue *q = w->q;
    MDB_val v;
    int err = wget(w, QDB_META, "layout", 6, &v);
    struct qrec_meta m;
    if (!err)
        err = qrec_meta_decode(v.mv_data, v.mv_size, &m);
    if (err)
        return err;
    m.id_ms = q->id_ms;
    m.id_ctr = q->id_ctr;
    struct buf b;
    buf_init(&b, 256);
    err = qrec_meta_encode(&m, &b);
    if (!err)
        err = wput(w, QDB_META, "layout", 6, b.data, b.len, 0);
    buf_free(&b);
    return err;
}

/*
 * LMDB reports a short pwrite(2) as EIO, and a disk that fills up mid-write
 * gives a short write before it gives ENOSPC. So an I/O error on a file
 * system with less free space than the transaction needed (plus a margin)
 * is called what it is: full.
 */
static int classify_io(const struct queue *q, int err, uint64_t bytes)
{
    struct statvfs sv;
    if (err != ERR_IO || q->lock_fd < 0 || fstatvfs(q->lock_fd, &sv) != 0)
        return err;
    uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    if (avail < bytes + (4u << 20))
        return ERR_FULL;
    return err;
}

/* Apply n requests from list in one transaction and commit it. */
static int run_txn(struct queue *q, struct qreq *list, size_t n)
{
    uint64_t bytes = 0;
    struct qreq *b = list;
    for (size_t i = 0; i < n; i++, b = b->next)
        bytes += b->body_len + b->rcpts.len + b->rec.len;
    for (;;) {
        struct wtx w = {.q = q};
        pthread_rwlock_rdlock(&q->resize);
        int err = werr(&w, mdb_txn_begin(q->env, NULL, 0, &w.txn));
        if (err) {
            pthread_rwlock_unlock(&q->resize);
            return err;
        }
        struct qreq *r = list;
        for (size_t i = 0; i < n && !err; i++, r = r->next)
            err = apply(&w, r);
        if (!err && w.id_used)
            err = put_meta(&w);
        if (err) {
            mdb_txn_abort(w.txn);
        } else {
            err = classify_io(q, werr(&w, mdb_txn_commit(w.txn)), bytes);
            if (!err) {
                __atomic_add_fetch(&q->commits, 1, __ATOMIC_RELAXED);
                metric_observe(MET_QUEUE_COMMIT, NULL, NULL, (double)n);
            }
        }
        pthread_rwlock_unlock(&q->resize);
        if (w.map_full) {
            int g = queue_grow_map(q);
            if (g == 0)
                continue;
            return g;
        }
        return err;
    }
}

/* The final status of r. A stage whose chunk was not stored can only
 * fail: its later requests (run after this one) see werr. */
static void settle(struct qreq *r, int status)
{
    r->status = status;
    if (status && r->type == R_STAGE_CHUNK && !r->stage->werr)
        r->stage->werr = status;
}

/*
 * Writes go to the file with pwrite(2); the map is only read. But every
 * read of a B-tree page through the map also maps the pages around it
 * (the kernel's fault-around), which are mostly body chunks just written:
 * page cache that the process then counts as its own resident memory, a
 * large part of all it writes when many small transactions carry chunks. Every UNMAP_EVERY bytes
 * the writer maps the file afresh (mdb_env_set_mapsize() with the same size, under the resize lock
 * as a growth is), which drops those pages from the process; they stay in the page cache for
 * whoever reads them next. Writer thread only, between transactions.
 */
static void drop_map_pages(struct queue *q, uint64_t bytes)
{
    q->unmap_bytes += bytes;
    if (q->unmap_bytes < UNMAP_EVERY)
        return;
    q->unmap_bytes = 0;
    pthread_rwlock_wrlock(&q->resize);
    int rc = mdb_env_set_mapsize(q->env, (size_t)q->map_size);
    pthread_rwlock_unlock(&q->resize);
    if (rc)
        log_warn("queue", "cannot map the queue afresh: %s", mdb_strerror(rc));
}

static void process_group(struct queue *q, struct qreq *list, size_t n)
{
    int err = run_txn(q, list, n);
    struct qreq *r = list;
    if (err && n > 1) {
        /* Isolate the failing request(s): each alone. */
        for (size_t i = 0; i < n; i++, r = r->next)
            settle(r, run_txn(q, r, 1));
    } else {
        for (size_t i = 0; i < n; i++, r = r->next)
            settle(r, err);
    }
    uint64_t bytes = 0;
    for (r = list; r && n; r = r->next, n--) {
        bytes += r->body_len;
        if (r->status && r->due) {
            due_free_n(r->due, r->n_due);
            r->due = NULL;
            r->n_due = 0;
        }
        if (r->status && r->status != ERR_NOTFOUND && r->status != ERR_INVAL)
            log_err("queue", "write failed: %s", err_str(r->status));
    }
    drop_map_pages(q, bytes);
}

/* The last transaction whose meta page has been written. */
static uint64_t last_txnid(struct queue *q)
{
    MDB_envinfo info;
    mdb_env_info(q->env, &info);
    return (uint64_t)info.me_last_txnid;
}

/* Make the held groups durable with one fdatasync(2) of the file (their meta
 * pages were written unsynced). If that fails, a submission is reported as
 * not accepted: its client sends the message again, and a duplicate is
 * better than a message that the client thinks we keep but a crash could
 * take. */
static void sync_held(struct queue *q, struct qreq *held)
{
    int rc = mdb_env_sync(q->env, 1);
    if (rc == 0)
        return;
    log_err("queue", "cannot sync the queue: %s", mdb_strerror(rc));
    for (struct qreq *r = held; r; r = r->next)
        if (r->status == 0 && (r->type == R_SUBMIT || r->type == R_STAGE_COMMIT))
            settle(r, ERR_IO);
}

/* Move head..last to q->done (under q->lock) and wake the loop. */
static void release(struct queue *q, struct qreq *head, struct qreq *last)
{
    if (q->done_tail)
        q->done_tail->next = head;
    else
        q->done = head;
    q->done_tail = last;
    uv_async_send(q->async);
}

/*
 * One sync per commit. The environment is opened with MDB_NOMETASYNC:
 * mdb_txn_commit() writes the data pages, syncs them, then writes the meta
 * page that makes the transaction current without syncing it. A group is
 * durable once that meta page is on disk: after the next commit's data sync
 * (fdatasync(2) flushes the whole file, that meta page included) or after
 * mdb_env_sync(). So a committed group is held while more work waits, the
 * next group is committed, and then the held one is released to the loop
 * (its callbacks, the 250 replies, run only then); with nothing waiting the
 * writer syncs at once. Under load that is one sync per group instead of
 * two, with a group's reply no later than before (two syncs either way);
 * an idle relay replies as soon as before. LMDB keeps the database
 * consistent either way (a crash can only lose the held, unreplied group).
 */
static void *writer_main(void *arg)
{
    struct queue *q = arg;
    struct qreq *held = NULL, *held_last = NULL; /* committed, meta page not yet synced */
    uint64_t held_txn = 0, synced_txn = last_txnid(q);
    pthread_mutex_lock(&q->lock);
    for (;;) {
        if (held && !q->pending) {
            pthread_mutex_unlock(&q->lock);
            sync_held(q, held);
            synced_txn = held_txn;
            pthread_mutex_lock(&q->lock);
            release(q, held, held_last);
            held = held_last = NULL;
            continue;
        }
        while (!q->pending && !q->stopping)
            pthread_cond_wait(&q->cond, &q->lock);
        if (!q->pending)
            break;
        /* Take a group off the pending list. */
        struct qreq *head = q->pending, *last = head;
        size_t n = 1, bytes = head->body_len;
        while (last->next && n < GROUP_MAX && bytes + last->next->body_len <= GROUP_BYTES) {
            last = last->next;
            bytes += last->body_len;
            n++;
        }
        q->pending = last->next;
        if (!q->pending)
            q->pending_tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&q->lock);

        process_group(q, head, n);
        uint64_t txn = last_txnid(q);

        pthread_mutex_lock(&q->lock);
        if (held && txn > held_txn) {
            /* This group's commit synced the held group's meta page. */
            release(q, held, held_last);
            synced_txn = held_txn;
            held = held_last = NULL;
        }
        if (!held && txn == synced_txn) {
            release(q, head, last); /* it changed nothing */
        } else {
            if (held)
                held_last->next = head;
            else
                held = head;
            held_last = last;
            held_txn = txn;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

void queue_req_free(struct qreq *r)
{
    buf_free(&r->rec);
    buf_free(&r->rcpts);
    buf_free(&r->data);
    if (r->due)
        due_free_n(r->due, r->n_due);
    free(r);
}

/* Loop thread: run the callbacks of finished requests, in commit order. */
static void dispatch(struct queue *q)
{
    pthread_mutex_lock(&q->lock);
    struct qreq *r = q->done;
    q->done = q->done_tail = NULL;
    pthread_mutex_unlock(&q->lock);
    bool new_work = false;
    while (r) {
        struct qreq *next = r->next;
        switch (r->type) {
        case R_STAGE_CHUNK:
        case R_STAGE_ABORT:
            break;
        case R_SUBMIT:
        case R_STAGE_COMMIT:
            if (r->cb.submit)
                r->cb.submit(r->arg, r->status, r->status ? NULL : r->id);
            break;
        case R_LEASE:
            if (r->due && r->cb.lease) {
                r->due[r->n_due].addr = NULL;
                struct queue_due *due = r->due;
                r->due = NULL;
                r->cb.lease(r->arg, r->status, due, r->n_due);
            } else if (r->cb.lease) {
                r->cb.lease(r->arg, r->status, NULL, 0);
            }
            break;
        default:
            if (r->cb.done)
                r->cb.done(r->arg, r->status);
            break;
        }
        if (r->status == 0 && (r->type == R_SUBMIT || r->type == R_STAGE_COMMIT ||
                               r->type == R_RELEASE || r->type == R_RETRY || r->type == R_UNLEASE))
            new_work = true;
        if (r->stage)
            queue_stage_done(q, r);
        queue_req_free(r);
        r = next;
    }
    if (new_work && q->opt.on_new_work && !q->closing)
        q->opt.on_new_work(q->opt.on_new_work_arg);
}

static void on_async(uv_async_t *h)
{
    struct queue *q = h->data;
    if (q)
        dispatch(q);
}

static void on_async_closed(uv_handle_t *h)
{
    free(h);
}

/* Loop thread: give the staged requests to the writer. */
static void handoff(struct queue *q)
{
    if (!q->staged)
        return;
    pthread_mutex_lock(&q->lock);
    if (q->pending_tail)
        q->pending_tail->next = q->staged;
    else
        q->pending = q->staged;
    q->pending_tail = q->staged_tail;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    q->staged = q->staged_tail = NULL;
    if (q->handoff)
        uv_prepare_stop(q->handoff);
}

static void on_handoff(uv_prepare_t *h)
{
    struct queue *q = h->data;
    if (q)
        handoff(q);
}

int queue_writer_start(struct queue *q, uv_loop_t *loop)
{
    q->rng = (uint64_t)time_now_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)q;
    q->async = calloc(1, sizeof(*q->async));
    if (!q->async)
        return ERR_NOMEM;
    if (uv_async_init(loop, q->async, on_async) != 0) {
        free(q->async);
        q->async = NULL;
        return ERR_IO;
    }
    q->async->data = q;
    q->handoff = calloc(1, sizeof(*q->handoff));
    if (q->handoff)
        uv_prepare_init(loop, q->handoff);
    if (!q->handoff || pthread_create(&q->thread, NULL, writer_main, q) != 0) {
        int rc = q->handoff ? ERR_IO : ERR_NOMEM;
        q->async->data = NULL;
        uv_close((uv_handle_t *)q->async, on_async_closed);
        q->async = NULL;
        if (q->handoff)
            uv_close((uv_handle_t *)q->handoff, on_async_closed);
        q->handoff = NULL;
        return rc;
    }
    q->handoff->data = q;
    q->thread_started = true;
    return 0;
}

void queue_writer_stop(struct queue *q)
{
    q->closing = true;
    handoff(q);
    if (q->handoff) {
        q->handoff->data = NULL;
        uv_close((uv_handle_t *)q->handoff, on_async_closed);
        q->handoff = NULL;
    }
    if (q->thread_started) {
        pthread_mutex_lock(&q->lock);
        q->stopping = true;
        pthread_cond_signal(&q->cond);
        pthread_mutex_unlock(&q->lock);
        pthread_join(q->thread, NULL);
        q->thread_started = false;
    }
    dispatch(q);
    if (q->async) {
        q->async->data = NULL;
        uv_close((uv_handle_t *)q->async, on_async_closed);
        q->async = NULL;
    }
}

/* ---- the request functions (loop thread) ---------------------------------- */

struct qreq *queue_req_new(struct queue *q, enum qreq_type type, int *err)
{
    *err = 0;
    if (q->read_only) {
        *err = ERR_PERM;
        return NULL;
    }
    if (q->closing) {
        *err = ERR_CLOSED;
        return NULL;
    }
    struct qreq *r = calloc(1, sizeof(*r));
    if (!r) {
        *err = ERR_NOMEM;
        return NULL;
    }
    r->type = type;
    r->now_ms = queue_now(q);
    buf_init(&r->rec, SIZE_MAX / 2);
    buf_init(&r->rcpts, SIZE_MAX / 2);
    return r;
}

int queue_req_queue(struct queue *q, struct qreq *r)
{
    if (q->staged_tail)
        q->staged_tail->next = r;
    else
        q->staged = r;
    q->staged_tail = r;
    if (q->handoff && !uv_is_active((uv_handle_t *)q->handoff))
        uv_prepare_start(q->handoff, on_handoff);
    else if (!q->handoff)
        handoff(q);
    return 0;
}

/* The MSG record and the RCPT records of a new message into r. */
int queue_envelope_encode(struct qreq *r, const struct queue_envelope *env,
                          const struct queue_rcpt_in *rcpts, size_t n_rcpts, uint64_t size,
                          uint32_t n_chunks, uint32_t rec_flags)
{
    int64_t arrival = env->arrival_ms > 0 ? env->arrival_ms : r->now_ms;
    struct qrec_msg m = {
        .arrival_ms = arrival,
        .size = size,
        .n_chunks = n_chunks,
        .n_rcpts = (uint32_t)n_rcpts,
        .n_open = (uint32_t)n_rcpts,
        .ret = (uint8_t)(env->ret <= QUEUE_RET_HDRS ? env->ret : QUEUE_RET_NONE),
        .flags = (env->flags & ~(QUEUE_F_DELAY_WARNED | QREC_F_PREFIX)) | rec_flags,
        .sender = qrec_view(env->sender),
        .client_name = qrec_view(env->client_name),
        .client_addr = qrec_view(env->client_addr),
        .helo = qrec_view(env->helo),
        .auth_user = qrec_view(env->auth_user),
        .tls = qrec_view(env->tls),
        .envid = qrec_view(env->envid),
    };
    int err = qrec_msg_encode(&m, &r->rec);
    for (size_t i = 0; i < n_rcpts && !err; i++) {
        if (!rcpts[i].addr) {
            err = ERR_INVAL;
            break;
        }
        struct qrec_rcpt rr = {
            .state = QUEUE_RCPT_QUEUED,
            .notify = (uint8_t)(rcpts[i].notify & 0x0fu),
            .next_ms = r->now_ms,
            .addr = qrec_view(rcpts[i].addr),
            .orcpt = qrec_view(rcpts[i].orcpt),
        };
        size_t at = r->rcpts.len;
        err = buf_append(&r->rcpts, "\0\0\0\0", 4);
        if (!err)
            err = qrec_rcpt_encode(&rr, &r->rcpts);
        if (!err)
            qkey_put_u32((uint8_t *)r->rcpts.data + at, (uint32_t)(r->rcpts.len - at - 4));
    }
    r->n_rcpts = (uint32_t)n_rcpts;
    return err;
}

int queue_submit(struct queue *q, const struct queue_envelope *env,
                 const struct queue_rcpt_in *rcpts, size_t n_rcpts, const void *body,
                 size_t body_len, queue_submit_cb cb, void *arg)
{
    if (!q || !env || !rcpts || n_rcpts == 0 || (!body && body_len))
        return ERR_INVAL;
    if (n_rcpts > QUEUE_RCPT_MAX || body_len > q->opt.message_size_limit)
        return ERR_TOOBIG;
    int err;
    struct qreq *r = queue_req_new(q, R_SUBMIT, &err);
    if (!r)
        return err;
    err = queue_envelope_encode(r, env, rcpts, n_rcpts, body_len,
                                (uint32_t)((body_len + QUEUE_CHUNK - 1) / QUEUE_CHUNK), 0);
    if (err) {
        queue_req_free(r);
        return err;
    }
    r->body = body;
    r->body_len = body_len;
    r->cb.submit = cb;
    r->arg = arg;
    return queue_req_queue(q, r);
}

int queue_lease(struct queue *q, size_t max, queue_lease_cb cb, void *arg)
{
    if (!q || max > 100000)
        return ERR_INVAL;
    int err;
    struct qreq *r = queue_req_new(q, R_LEASE, &err);
    if (!r)
        return err;
    r->max = max;
    r->cb.lease = cb;
    r->arg = arg;
    return queue_req_queue(q, r);
}

static int report(struct queue *q, enum qreq_type type, const char *id, uint32_t rcpt,
                  const struct queue_result *res, queue_done_cb cb, void *arg)
{
    if (!q || !queue_id_valid(id))
        return ERR_INVAL;
    int err;
    struct qreq *r = queue_req_new(q, type, &err);
    if (!r)
        return err;
    memcpy(r->id, id, QUEUE_ID_LEN + 1);
    r->rcpt = rcpt;
    if (res) {
        struct qrec_result rr = {
            .code = res->smtp_code,
            .when_ms = res->when_ms > 0 ? res->when_ms : r->now_ms,
            .dsn = qrec_view(res->dsn),
            .text = qrec_view(res->text),
            .mx = qrec_view(res->mx),
            .ip = qrec_view(res->ip),
            .tls = qrec_view(res->tls),
            .sts_mode = qrec_view(res->sts_mode),
            .sts_id = qrec_view(res->sts_id),
        };
        if (rr.code < 0 || rr.code > 999)
            err = ERR_INVAL;
        if (!err)
            err = qrec_result_encode(&rr, &r->rec);
        if (err) {
            queue_req_free(r);
            return err;
        }
    }
    r->cb.done = cb;
    r->arg = arg;
    return queue_req_queue(q, r);
}

int queue_delivered(struct queue *q, const char *id, uint32_t rcpt,
                    const struct queue_result *result, queue_done_cb cb, void *arg)
{
    return report(q, R_DELIVERED, id, rcpt, result, cb, arg);
}

int queue_defer(struct queue *q, const char *id, uint32_t rcpt, const struct queue_result *result,
                queue_done_cb cb, void *arg)
{
    return report(q, R_DEFER, id, rcpt, result, cb, arg);
}

int queue_bounce(struct queue *q, const char *id, uint32_t rcpt, const struct queue_result *result,
                 queue_done_cb cb, void *arg)
{
    return report(q, R_BOUNCE, id, rcpt, result, cb, arg);
}

int queue_unlease(struct queue *q, const char *id, uint32_t rcpt, queue_done_cb cb, void *arg)
{
    return report(q, R_UNLEASE, id, rcpt, NULL, cb, arg);
}

int queue_postpone(struct queue *q, const char *id, uint32_t rcpt, int64_t when_ms,
                   queue_done_cb cb, void *arg)
{
    if (!q || !queue_id_valid(id))
        return ERR_INVAL;
    int err;
    struct qreq *r = queue_req_new(q, R_UNLEASE, &err);
    if (!r)
        return err;
    memcpy(r->id, id, QUEUE_ID_LEN + 1);
    r->rcpt = rcpt;
    r->when_ms = when_ms;
    r->cb.done = cb;
    r->arg = arg;
    return queue_req_queue(q, r);
}

static int message_op(struct queue *q, enum qreq_type type, const char *id, queue_done_cb cb,
                      void *arg)
{
    bool all = type == R_RETRY && id == NULL;
    if (!q || (!all && !queue_id_valid(id)))
        return ERR_INVAL;
    int err;
    struct qreq *r = queue_req_new(q, type, &err);
    if (!r)
        return err;
    r->all = all;
    if (!all)
        memcpy(r->id, id, QUEUE_ID_LEN + 1);
    r->cb.done = cb;
    r->arg = arg;
    return queue_req_queue(q, r);
}

int queue_hold(struct queue *q, const char *id, queue_done_cb cb, void *arg)
{
    return message_op(q, R_HOLD, id, cb, arg);
}

int queue_release(struct queue *q, const char *id, queue_done_cb cb, void *arg)
{
    return message_op(q, R_RELEASE, id, cb, arg);
}

int queue_retry(struct queue *q, const char *id, queue_done_cb cb, void *arg)
{
    return message_op(q, R_RETRY, id, cb, arg);
}

int queue_remove(struct queue *q, const char *id, queue_done_cb cb, void *arg)
{
    return message_op(q, R_REMOVE, id, cb, arg);
}

int queue_delay_warned(struct queue *q, const char *id, queue_done_cb cb, void *arg)
{
    return message_op(q, R_DELAY_WARNED, id, cb, arg);
}
