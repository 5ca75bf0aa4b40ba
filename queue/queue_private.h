/*
 * queue_private.h - private to queue/: the queue object shared by queue.c
 * (environment, reads) and writer.c (writer thread, requests).
 *
 * Locking:
 *  - q->lock guards the pending and done request lists and q->stopping.
 *  - q->resize: every LMDB transaction in this process holds it for
 *    reading; a map resize holds it for writing.
 *  - id_ms/id_ctr, the PRNG and map_size are touched only by the writer
 *    thread once the queue is open.
 */
#ifndef CONVOY_QUEUE_PRIVATE_H
#define CONVOY_QUEUE_PRIVATE_H

#include <lmdb.h>
#include <pthread.h>

#include "queue_int.h"

/* The most recipients of one message. */
#define QUEUE_RCPT_MAX 100000u

enum qdb { QDB_META, QDB_MSG, QDB_BODY, QDB_RCPT, QDB_SCHED, QDB_LEASE, QDB_N };

struct qreq;

struct queue {
    struct queue_options opt;
    bool read_only;
    MDB_env *env;
    MDB_dbi dbi[QDB_N];
    int lock_fd;
    uint64_t map_size;
    pthread_rwlock_t resize;

    /* ID generator high-water mark. */
    uint64_t id_ms;
    uint32_t id_ctr;
    uint64_t rng;

    /* Writer thread. */
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct qreq *pending, *pending_tail;
    /* Loop thread only: requests made in this loop iteration, handed to the
     * writer together by the prepare handle before the loop blocks. */
    struct qreq *staged, *staged_tail;
    uv_prepare_t *handoff;
    struct qreq *done, *done_tail;
    bool stopping; /* under lock: the writer drains and exits */
    bool closing;  /* loop thread: no new requests */
    uv_async_t *async;
    uint64_t commits;
    uint64_t unmap_bytes; /* writer thread: written since the map was last unmapped */
};

/* A staged submission (writer.c). The loop thread owns every field but
 * id and werr, which only the writer thread touches once the first request
 * of the stage has been handed over. */
struct queue_stage {
    struct queue *q;
    int refs;          /* the owner until commit or abort, and each request */
    bool ended;        /* commit or abort was called */
    int err;           /* a chunk failed to be stored (as the loop heard it) */
    uint64_t size;     /* body bytes appended */
    uint32_t n_chunks; /* whole chunks handed to the writer (numbered from 1) */
    size_t inflight;   /* bytes of those not yet committed */
    struct buf part;   /* the chunk being filled */
    void (*on_progress)(void *arg);
    void *arg;
    /* writer thread */
    char id[QUEUE_ID_LEN + 1]; /* "" until its first request is applied */
    int werr;                  /* a chunk failed: the commit fails with this */
};

int queue_mdb_err(int rc);
int64_t queue_now(const struct queue *q);
int queue_rtxn_begin(struct queue *q, MDB_txn **txn);
void queue_rtxn_end(struct queue *q, MDB_txn *txn);

/* A request to the writer thread (writer.c): made on the loop thread,
 * applied by the writer, its callback run back on the loop thread. */
enum qreq_type {
    R_SUBMIT,
    R_LEASE,
    R_DELIVERED,
    R_DEFER,
    R_BOUNCE,
    R_UNLEASE,
    R_HOLD,
    R_RELEASE,
    R_RETRY,
    R_REMOVE,
    R_DELAY_WARNED,
    R_STAGE_CHUNK,
    R_STAGE_COMMIT,
    R_STAGE_ABORT
};

struct qreq {
    struct qreq *next;
    enum qreq_type type;
    int status;
    int64_t now_ms;
    char id[QUEUE_ID_LEN + 1]; /* target, or the new message's ID */
    bool all;                  /* retry: every message */
    uint32_t rcpt;
    int64_t when_ms;  /* unlease: due again at this time (0: now) */
    struct buf rec;   /* submit: MSG record; reports: RESULT record (or empty) */
    struct buf rcpts; /* submit: [u32 length][RCPT record] ... */
    uint32_t n_rcpts;
    const void *body;
    size_t body_len;
    struct queue_stage *stage; /* stage requests */
    struct buf data;           /* stage: a chunk; commit: the prefix, then the last chunk */
    size_t prefix_len;         /* commit */
    uint32_t chunk;            /* stage chunk: its number */
    size_t max;                /* lease */
    struct queue_due *due;
    size_t n_due;
    union {
        queue_done_cb done;
        queue_submit_cb submit;
        queue_lease_cb lease;
    } cb;
    void *arg;
};

/* writer.c */
struct qreq *queue_req_new(struct queue *q, enum qreq_type type, int *err);
/* Hand r to the writer with this loop iteration's other requests. */
int queue_req_queue(struct queue *q, struct qreq *r);
void queue_req_free(struct qreq *r);
/* The MSG record and the RCPT records of a new message into r. */
int queue_envelope_encode(struct qreq *r, const struct queue_envelope *env,
                          const struct queue_rcpt_in *rcpts, size_t n_rcpts, uint64_t size,
                          uint32_t n_chunks, uint32_t rec_flags);
/* stage.c: a stage request was dispatched (loop thread). */
void queue_stage_done(struct queue *q, struct qreq *r);

int queue_writer_start(struct queue *q, uv_loop_t *loop);
/* Double the map (up to max_map_size) with no transaction of this process
 * active; 0, or ERR_FULL at the limit. */
int queue_grow_map(struct queue *q);
void queue_writer_stop(struct queue *q);
/* In the opening write transaction, what a previous process left: every
 * ACTIVE recipient is due again now, and the body chunks of every stage it
 * did not finish (its marker is still there) are removed. *map_full says
 * whether an error was the map's size (grow it and run again) rather than
 * the disk or the data. */
int queue_recover(struct queue *q, MDB_txn *txn, bool *map_full);

#endif
