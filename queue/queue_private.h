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

/* writer.c */
int queue_writer_start(struct queue *q, uv_loop_t *loop);
void queue_writer_stop(struct queue *q);
/* In the opening write transaction: every ACTIVE recipient left by a
 * previous process is due again now. */
int queue_recover_leases(struct queue *q, MDB_txn *txn);
/* In the opening write transaction: remove the body chunks of every stage
 * left unfinished by a previous process (its marker is still there). */
int queue_purge_stages(struct queue *q, MDB_txn *txn);

#endif
