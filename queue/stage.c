/*
 * stage.c - staged submissions on the loop thread (queue_stage_* in
 * queue.h): a body taken in pieces, handed to the writer a whole chunk at a
 * time, then committed with its record or aborted. The writer's side (what
 * each request writes, the marker, the purge at open) is in writer.c.
 *
 * Invariants:
 *  - A stage is freed when its owner has committed or aborted it and every
 *    request of it has been dispatched (refs).
 *  - Requests of one stage reach the writer in the order they were made,
 *    so an abort comes after every chunk it must remove.
 */
#include "queue_private.h"

#include <stdlib.h>
#include <string.h>

/* Most bytes one stage may hold in its partial chunk. */
#define STAGE_PART QUEUE_CHUNK

static void stage_unref(struct queue_stage *st)
{
    if (--st->refs > 0)
        return;
    buf_free(&st->part);
    free(st);
}

/* A request of stage st, or NULL with *err. The request holds a reference. */
static struct qreq *stage_req(struct queue_stage *st, enum qreq_type type, int *err)
{
    struct qreq *r = queue_req_new(st->q, type, err);
    if (!r)
        return NULL;
    r->stage = st;
    st->refs++;
    buf_init(&r->data, SIZE_MAX / 2);
    return r;
}

/* Remove what the stage stored (its requests run in order, so this comes
 * after every chunk already handed over). If the queue is closing the
 * marker stays, and the next open removes the chunks. */
static void stage_purge_later(struct queue_stage *st)
{
    int err;
    struct qreq *r = stage_req(st, R_STAGE_ABORT, &err);
    if (r)
        queue_req_queue(st->q, r);
}

void queue_stage_done(struct queue *q, struct qreq *r)
{
    struct queue_stage *st = r->stage;
    (void)q;
    if (r->type == R_STAGE_CHUNK) {
        st->inflight -= r->data.len;
        if (r->status && !st->err)
            st->err = r->status;
        if (!st->ended && st->on_progress)
            st->on_progress(st->arg);
    } else if (r->type == R_STAGE_COMMIT && r->status) {
        stage_purge_later(st);
    }
    stage_unref(st);
}

int queue_stage_open(struct queue *q, void (*on_progress)(void *arg), void *arg,
                     struct queue_stage **out)
{
    *out = NULL;
    if (!q)
        return ERR_INVAL;
    if (q->read_only)
        return ERR_PERM;
    if (q->closing)
        return ERR_CLOSED;
    struct queue_stage *st = calloc(1, sizeof(*st));
    if (!st)
        return ERR_NOMEM;
    st->q = q;
    st->refs = 1;
    st->on_progress = on_progress;
    st->arg = arg;
    buf_init(&st->part, STAGE_PART);
    *out = st;
    return 0;
}

/* Hand the full partial chunk to the writer. */
static int stage_send(struct queue_stage *st)
{
    int err;
    struct qreq *r = stage_req(st, R_STAGE_CHUNK, &err);
    if (!r)
        return err;
    r->chunk = ++st->n_chunks; /* chunk 0 is the prefix */
    buf_free(&r->data);
    r->data = st->part; /* the request takes the storage */
    r->body_len = r->data.len;
    st->inflight += r->data.len;
    buf_init(&st->part, STAGE_PART);
    return queue_req_queue(st->q, r);
}

int queue_stage_append(struct queue_stage *st, const void *p, size_t n)
{
    if (!st || st->ended)
        return ERR_INVAL;
    if (st->err)
        return st->err;
    if (n > st->q->opt.message_size_limit - st->size) {
        st->err = ERR_TOOBIG;
        return st->err;
    }
    st->size += n;
    const char *in = p;
    while (n > 0) {
        size_t take = STAGE_PART - st->part.len;
        if (take > n)
            take = n;
        int err = buf_append(&st->part, in, take);
        if (!err && st->part.len == STAGE_PART)
            err = stage_send(st);
        if (err) {
            st->err = err;
            return err;
        }
        in += take;
        n -= take;
    }
    return 0;
}

size_t queue_stage_backlog(const struct queue_stage *st)
{
    return st ? st->inflight + st->part.len : 0;
}

int queue_stage_commit(struct queue_stage *st, const struct queue_envelope *env,
                       const struct queue_rcpt_in *rcpts, size_t n_rcpts, const void *prefix,
                       size_t prefix_len, queue_submit_cb cb, void *arg)
{
    if (!st || st->ended)
        return ERR_INVAL;
    st->ended = true;
    int err = st->err;
    if (!err && (!env || !rcpts || n_rcpts == 0 || (!prefix && prefix_len)))
        err = ERR_INVAL;
    if (!err && (n_rcpts > QUEUE_RCPT_MAX || prefix_len > QUEUE_CHUNK ||
                 prefix_len > st->q->opt.message_size_limit - st->size))
        err = ERR_TOOBIG;
    struct qreq *r = NULL;
    if (!err)
        r = stage_req(st, R_STAGE_COMMIT, &err);
    uint32_t tail = st->part.len > 0 ? 1 : 0;
    if (!err)
        err = queue_envelope_encode(r, env, rcpts, n_rcpts, prefix_len + st->size,
                                    1 + st->n_chunks + tail, QREC_F_PREFIX);
    if (!err)
        err = buf_append(&r->data, prefix, prefix_len);
    if (!err)
        err = buf_append(&r->data, st->part.data, st->part.len);
    if (err) {
        if (r) {
            r->stage = NULL;
            st->refs--;
            queue_req_free(r);
        }
        if (st->n_chunks > 0)
            stage_purge_later(st);
        stage_unref(st);
        return err;
    }
    r->prefix_len = prefix_len;
    r->chunk = st->n_chunks + 1;
    r->body_len = r->data.len;
    r->cb.submit = cb;
    r->arg = arg;
    buf_free(&st->part);
    stage_unref(st); /* the owner's reference: r holds one */
    return queue_req_queue(r->stage->q, r);
}

void queue_stage_abort(struct queue_stage *st)
{
    if (!st || st->ended)
        return;
    st->ended = true;
    if (st->n_chunks > 0)
        stage_purge_later(st);
    stage_unref(st);
}
