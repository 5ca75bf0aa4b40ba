/*
 * queue.c - the LMDB environment of the queue: open (layout check, crash
 * recovery of leases), close, the map size, and the synchronous reads
 * (listing, one message, body, statistics, next due time).
 *
 * Invariants:
 *  - The environment is opened with MDB_NOTLS, so read transactions are not
 *    tied to a thread, and without MDB_WRITEMAP or MDB_NOSYNC: every commit
 *    is written with pwrite(2) and its data pages synced before
 *    mdb_txn_commit() returns, so a full disk is an error return and never a
 *    SIGBUS. A read-write opener adds MDB_NOMETASYNC: the writer makes a
 *    commit durable by the next commit's sync or by mdb_env_sync() before it
 *    reports the commit (writer.c); the queue's own commit in queue_open()
 *    is synced here.
 *  - The map is resized only by the writer thread, between transactions and
 *    holding q->resize for writing, or by queue_open() before that thread
 *    starts; every transaction in this process holds it for reading (LMDB
 *    forbids a resize while a transaction is active).
 *  - A read-write opener holds flock(LOCK_EX) on the data file, so two
 *    daemons never share one queue.
 *
 * The writer thread and the requests are in writer.c.
 */
#include "queue_private.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define QUEUE_FILE "queue.lmdb"

void queue_options_default(struct queue_options *o)
{
    memset(o, 0, sizeof(*o));
    o->initial_map_size = 64ull << 20;
    o->max_map_size = 1ull << 40;
    o->message_size_limit = 50ull << 20;
    o->minimal_backoff = 300;
    o->maximal_backoff = 4000;
    o->maximal_lifetime = 5 * 86400;
    o->bounce_lifetime = 5 * 86400;
    o->lease_time = 3600;
}

int queue_mdb_err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS:
        return 0;
    case MDB_NOTFOUND:
        return ERR_NOTFOUND;
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return ERR_FULL;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_BAD_VALSIZE:
        return ERR_CORRUPT;
    case MDB_VERSION_MISMATCH:
        return ERR_VERSION;
    case ENOMEM:
        return ERR_NOMEM;
    case EACCES:
    case EPERM:
    case EROFS:
        return ERR_PERM;
    case ENOENT:
        return ERR_NOTFOUND;
    case EAGAIN:
        return ERR_AGAIN;
    default:
        return ERR_IO;
    }
}

int64_t queue_now(const struct queue *q)
{
    if (q->opt.clock_ms)
        return q->opt.clock_ms(q->opt.clock_arg);
    return time_now_ms();
}

/* ---- read transactions --------------------------------------------------- */

int queue_rtxn_begin(struct queue *q, MDB_txn **txn)
{
    for (int tries = 0; tries < 4; tries++) {
        pthread_rwlock_rdlock(&q->resize);
        int rc = mdb_txn_begin(q->env, NULL, MDB_RDONLY, txn);
        if (rc == 0)
            return 0;
        pthread_rwlock_unlock(&q->resize);
        if (rc != MDB_MAP_RESIZED)
            return queue_mdb_err(rc);
        /* Another process grew the map: adopt its size (no transaction of
         * ours may be active, hence the write lock). */
        pthread_rwlock_wrlock(&q->resize);
        mdb_env_set_mapsize(q->env, 0);
        pthread_rwlock_unlock(&q->resize);
    }
    return ERR_AGAIN;
}

void queue_rtxn_end(struct queue *q, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&q->resize);
}

/* ---- open ---------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int open_fail(struct buf *why, int rc, const char *fmt,
                                                           ...)
{
    if (why) {
        va_list ap;
        va_start(ap, fmt);
        buf_vprintf(why, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int open_dbis(struct queue *q, MDB_txn *txn, unsigned flags)
{
    static const char *const names[QDB_N] = {"meta", "msg", "body", "rcpt", "sched", "lease"};
    for (int i = 0; i < QDB_N; i++) {
        int rc = mdb_dbi_open(txn, names[i], flags, &q->dbi[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* Check (or, for a new read-write queue, write) the layout record. */
static int check_layout(struct queue *q, MDB_txn *txn, bool create, struct buf *why)
{
    MDB_val k = {6, (void *)"layout"}, v;
    int rc = mdb_get(txn, q->dbi[QDB_META], &k, &v);
    if (rc == MDB_NOTFOUND && create) {
        MDB_stat st;
        mdb_stat(txn, q->dbi[QDB_MSG], &st);
        if (st.ms_entries != 0)
            return open_fail(why, ERR_CORRUPT, "queue in %s: messages but no layout record",
                             q->opt.directory);
        struct qrec_meta m = {.layout = QUEUE_LAYOUT_VERSION, .created_ms = queue_now(q)};
        struct buf b;
        buf_init(&b, 256);
        int err = qrec_meta_encode(&m, &b);
        if (err == 0) {
            MDB_val nv = {b.len, b.data};
            err = queue_mdb_err(mdb_put(txn, q->dbi[QDB_META], &k, &nv, 0));
        }
        buf_free(&b);
        q->id_ms = 0;
        q->id_ctr = 0;
        return err;
    }
    if (rc)
        return open_fail(why, queue_mdb_err(rc), "queue in %s: no layout record", q->opt.directory);
    /* The layout number sits at the same place in every format version:
     * after the two header bytes. Read it before anything else so a newer
     * file is named as such rather than called corrupt. */
    if (v.mv_size >= 6) {
        uint32_t layout = qkey_get_u32((const uint8_t *)v.mv_data + 2);
        if (layout != QUEUE_LAYOUT_VERSION) {
            return open_fail(why, ERR_VERSION,
                             "queue in %s has layout version %u; this program reads version %u",
                             q->opt.directory, layout, QUEUE_LAYOUT_VERSION);
        }
    }
    struct qrec_meta m;
    if (qrec_meta_decode(v.mv_data, v.mv_size, &m) != 0)
        return open_fail(why, ERR_CORRUPT, "queue in %s: layout record does not decode",
                         q->opt.directory);
    q->id_ms = m.id_ms;
    q->id_ctr = m.id_ctr;
    return 0;
}

/* The opening transaction: the databases, the layout record and, for the
 * read-write opener, the recovery of what a previous process left (leases,
 * unfinished stages), committed and synced. Every failure says why;
 * *map_full says whether it was the map's size. */
static int open_txn(struct queue *q, struct buf *why, bool *map_full)
{
    *map_full = false;
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->env, NULL, q->read_only ? MDB_RDONLY : 0, &txn);
    if (rc)
        return open_fail(why, queue_mdb_err(rc), "queue in %s: %s", q->opt.directory,
                         mdb_strerror(rc));
    rc = open_dbis(q, txn, q->read_only ? 0 : MDB_CREATE);
    if (rc) {
        mdb_txn_abort(txn);
        if (rc == MDB_NOTFOUND)
            return open_fail(why, ERR_VERSION, "%s is not a queue of this version%s",
                             q->opt.directory, " (its databases are missing)");
        return open_fail(why, queue_mdb_err(rc), "queue in %s: %s", q->opt.directory,
                         mdb_strerror(rc));
    }
    size_t said = why ? why->len : 0;
    int err = check_layout(q, txn, !q->read_only, why);
    if (err == 0 && !q->read_only)
        err = queue_recover(q, txn, map_full);
    if (err) {
        mdb_txn_abort(txn);
        if (why && why->len == said)
            open_fail(why, err, "queue in %s: cannot recover what the last process left: %s",
                      q->opt.directory, err_str(err));
        return err;
    }
    rc = mdb_txn_commit(txn);
    *map_full = rc == MDB_MAP_FULL;
    if (rc == 0 && !q->read_only)
        rc = mdb_env_sync(q->env, 1);
    if (rc)
        return open_fail(why, queue_mdb_err(rc), "queue in %s: %s", q->opt.directory,
                         mdb_strerror(rc));
    return 0;
}

int queue_open(uv_loop_t *loop, const struct queue_options *o, struct queue **out, struct buf *why)
{
    *out = NULL;
    if (!o || !o->directory || !*o->directory || (!o->read_only && !loop))
        return open_fail(why, ERR_INVAL, "queue: no directory or no loop");
    if (o->minimal_backoff <= 0 || o->maximal_backoff < o->minimal_backoff || o->lease_time <= 0 ||
        o->maximal_lifetime < 0 || o->bounce_lifetime < 0)
        return open_fail(why, ERR_INVAL, "queue: bad backoff, lifetime or lease time");

    struct queue *q = calloc(1, sizeof(*q));
    if (!q)
        return ERR_NOMEM;
    q->opt = *o;
    q->opt.directory = strdup(o->directory);
    q->lock_fd = -1;
    if (!q->opt.directory) {
        free(q);
        return ERR_NOMEM;
    }
    if (q->opt.initial_map_size < (1u << 20))
        q->opt.initial_map_size = 1u << 20;
    if (q->opt.max_map_size < q->opt.initial_map_size)
        q->opt.max_map_size = q->opt.initial_map_size;
    pthread_rwlock_init(&q->resize, NULL);
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->read_only = o->read_only;

    char path[4096];
    int n = snprintf(path, sizeof(path), "%s/%s", q->opt.directory, QUEUE_FILE);
    int err = 0;
    if (n < 0 || (size_t)n >= sizeof(path)) {
        err = open_fail(why, ERR_INVAL, "queue: directory name too long: %s", o->directory);
        goto fail;
    }

    struct stat st;
    if (q->read_only && stat(path, &st) != 0) {
        if (errno == ENOENT)
            err = open_fail(why, ERR_NOTFOUND,
                            "no queue in %s (convoyd has not created one there yet)",
                            q->opt.directory);
        else
            err = open_fail(why, queue_mdb_err(errno), "queue in %s: %s", q->opt.directory,
                            strerror(errno));
        goto fail;
    }
    if (q->read_only && st.st_size == 0) {
        err = open_fail(why, ERR_NOTFOUND, "queue in %s is empty (convoyd has not set it up yet)",
                        q->opt.directory);
        goto fail;
    }
    if (!q->read_only) {
        q->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
        if (q->lock_fd < 0) {
            err = open_fail(why, queue_mdb_err(errno), "queue: cannot open %s/%s: %s",
                            q->opt.directory, QUEUE_FILE, strerror(errno));
            goto fail;
        }
        if (flock(q->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            err = open_fail(why, ERR_AGAIN, "queue in %s is in use by another process",
                            q->opt.directory);
            goto fail;
        }
    }

    int rc = mdb_env_create(&q->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(q->env, QDB_N);
    if (rc == 0)
        rc = mdb_env_set_maxreaders(q->env, 126);
    if (rc == 0 && !q->read_only)
        rc = mdb_env_set_mapsize(q->env, q->opt.initial_map_size);
    if (rc) {
        err = open_fail(why, queue_mdb_err(rc), "queue in %s: %s", q->opt.directory,
                        mdb_strerror(rc));
        goto fail;
    }
    unsigned flags = MDB_NOSUBDIR | MDB_NOTLS;
    if (q->read_only)
        flags |= MDB_RDONLY;
    else
        flags |= MDB_NOMETASYNC;
    rc = mdb_env_open(q->env, path, flags, 0660);
    if (rc) {
        err = open_fail(why, queue_mdb_err(rc), "queue in %s: %s", q->opt.directory,
                        mdb_strerror(rc));
        goto fail;
    }
    MDB_envinfo info;
    mdb_env_info(q->env, &info);
    q->map_size = info.me_mapsize;

    /* The map is what this process asked for or what the data already
     * fills, whichever is larger, so the opening transaction (lease
     * recovery, stage purge) may not fit: grow it as the writer would. */
    for (;;) {
        bool map_full;
        err = open_txn(q, why, &map_full);
        if (!err || !map_full || queue_grow_map(q) != 0)
            break;
        if (why)
            buf_reset(why);
    }
    if (err)
        goto fail;
    if (!q->read_only) {
        /* Members of the daemon's group list the queue read-only: they read
         * the data file and register in LMDB's reader table, which needs
         * write access to the lock file. (Set here, not only at creation,
         * so queues made by older versions with 0600 are opened up too.) */
        char lpath[4200];
        if (snprintf(lpath, sizeof(lpath), "%s-lock", path) < (int)sizeof(lpath))
            chmod(lpath, 0660);
        if (fchmod(q->lock_fd, 0640) != 0)
            log_warn("queue", "cannot set the mode of %s: %s", path, strerror(errno));
        /* The data and lock files may be new: make their names durable too,
         * or a power loss could lose the file the first commit went to. */
        int dfd = open(q->opt.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        err = queue_writer_start(q, loop);
        if (err) {
            open_fail(why, err, "queue in %s: cannot start the writer", q->opt.directory);
            goto fail;
        }
    }
    log_debug("queue", "opened %s%s", path, q->read_only ? " read-only" : "");
    *out = q;
    return 0;

fail:
    if (q->env)
        mdb_env_close(q->env);
    if (q->lock_fd >= 0)
        close(q->lock_fd);
    pthread_rwlock_destroy(&q->resize);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free((void *)q->opt.directory);
    free(q);
    return err ? err : ERR_IO;
}

void queue_close(struct queue *q)
{
    if (!q)
        return;
    if (!q->read_only)
        queue_writer_stop(q);
    mdb_env_close(q->env);
    if (q->lock_fd >= 0)
        close(q->lock_fd);
    pthread_rwlock_destroy(&q->resize);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free((void *)q->opt.directory);
    free(q);
}

/* ---- building public structs from records -------------------------------- */

static char *vdup(struct view v)
{
    char *s = malloc(v.len + 1);
    if (s) {
        if (v.len)
            memcpy(s, v.ptr, v.len);
        s[v.len] = 0;
    }
    return s;
}

static void result_free(struct queue_result *r)
{
    free((void *)r->dsn);
    free((void *)r->text);
    free((void *)r->mx);
    free((void *)r->ip);
    free((void *)r->tls);
    free((void *)r->sts_mode);
    free((void *)r->sts_id);
}

void queue_message_free(struct queue_message *m)
{
    if (!m)
        return;
    free((void *)m->env.sender);
    free((void *)m->env.client_name);
    free((void *)m->env.client_addr);
    free((void *)m->env.helo);
    free((void *)m->env.auth_user);
    free((void *)m->env.tls);
    free((void *)m->env.envid);
    for (size_t i = 0; i < m->n_rcpts; i++) {
        free((void *)m->rcpts[i].addr);
        free((void *)m->rcpts[i].orcpt);
        result_free(&m->rcpts[i].last);
        for (size_t k = 0; k < m->rcpts[i].n_history; k++)
            result_free(&m->rcpts[i].history[k]);
        free(m->rcpts[i].history);
    }
    free(m->rcpts);
    free(m);
}

static int fill_result(struct queue_result *o, const struct qrec_result *l)
{
    o->smtp_code = l->code;
    o->when_ms = l->when_ms;
    o->dsn = vdup(l->dsn);
    o->text = vdup(l->text);
    o->mx = vdup(l->mx);
    o->ip = vdup(l->ip);
    o->tls = vdup(l->tls);
    o->sts_mode = vdup(l->sts_mode);
    o->sts_id = vdup(l->sts_id);
    if (!o->dsn || !o->text || !o->mx || !o->ip || !o->tls || !o->sts_mode || !o->sts_id)
        return ERR_NOMEM;
    return 0;
}

static int fill_rcpt(struct queue_rcpt *o, uint32_t index, const struct qrec_rcpt *r)
{
    o->index = index;
    o->addr = vdup(r->addr);
    o->orcpt = vdup(r->orcpt);
    o->notify = r->notify;
    o->state = (enum queue_rcpt_state)r->state;
    o->attempts = r->attempts;
    o->next_ms = r->next_ms;
    o->has_result = r->has_result;
    int err = fill_result(&o->last, &r->last);
    if (!o->addr || !o->orcpt)
        err = ERR_NOMEM;
    if (!err && r->n_hist) {
        o->history = calloc(r->n_hist, sizeof(*o->history));
        if (!o->history)
            return ERR_NOMEM;
        for (size_t i = 0; i < r->n_hist && !err; i++) {
            struct qrec_result h;
            err = qrec_hist_get(r, i, &h);
            if (!err) {
                o->n_history++;
                err = fill_result(&o->history[i], &h);
            }
        }
    }
    return err;
}

/* Read message id (16 bytes) in txn into a new struct queue_message. */
static int load_message(struct queue *q, MDB_txn *txn, const char *id, const MDB_val *msgval,
                        struct queue_message **out)
{
    struct qrec_msg rm;
    *out = NULL;
    if (qrec_msg_decode(msgval->mv_data, msgval->mv_size, &rm))
        return ERR_CORRUPT;
    struct queue_message *m = calloc(1, sizeof(*m));
    if (!m)
        return ERR_NOMEM;
    memcpy(m->id, id, QUEUE_ID_LEN);
    m->id[QUEUE_ID_LEN] = 0;
    m->env.sender = vdup(rm.sender);
    m->env.client_name = vdup(rm.client_name);
    m->env.client_addr = vdup(rm.client_addr);
    m->env.helo = vdup(rm.helo);
    m->env.auth_user = vdup(rm.auth_user);
    m->env.tls = vdup(rm.tls);
    m->env.envid = vdup(rm.envid);
    m->env.arrival_ms = rm.arrival_ms;
    m->env.ret = (enum queue_ret)rm.ret;
    m->env.flags = rm.flags & ~QREC_F_PREFIX;
    m->env.size = rm.size;
    int err = 0;
    if (!m->env.sender || !m->env.client_name || !m->env.client_addr || !m->env.helo ||
        !m->env.auth_user || !m->env.tls || !m->env.envid)
        err = ERR_NOMEM;
    m->rcpts = err ? NULL : calloc(rm.n_rcpts, sizeof(*m->rcpts));
    if (!m->rcpts)
        err = ERR_NOMEM;

    MDB_cursor *cur = NULL;
    if (!err && mdb_cursor_open(txn, q->dbi[QDB_RCPT], &cur))
        err = ERR_IO;
    uint8_t kb[QKEY_RCPT_LEN];
    memcpy(kb, id, QUEUE_ID_LEN);
    qkey_put_u32(kb + QUEUE_ID_LEN, 0);
    MDB_val k = {sizeof(kb), kb}, v;
    int rc = err ? MDB_NOTFOUND : mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (!err && rc == 0 && k.mv_size == QKEY_RCPT_LEN &&
           memcmp(k.mv_data, id, QUEUE_ID_LEN) == 0) {
        struct qrec_rcpt rr;
        uint32_t idx = qkey_get_u32((const uint8_t *)k.mv_data + QUEUE_ID_LEN);
        if (m->n_rcpts >= rm.n_rcpts || idx >= rm.n_rcpts ||
            qrec_rcpt_decode(v.mv_data, v.mv_size, &rr)) {
            err = ERR_CORRUPT;
            break;
        }
        err = fill_rcpt(&m->rcpts[m->n_rcpts++], idx, &rr);
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (cur)
        mdb_cursor_close(cur);
    if (!err && rc != 0 && rc != MDB_NOTFOUND)
        err = queue_mdb_err(rc);
    if (!err && m->n_rcpts != rm.n_rcpts)
        err = ERR_CORRUPT;
    if (err) {
        queue_message_free(m);
        return err;
    }
    *out = m;
    return 0;
}

int queue_message_read(struct queue *q, const char *id, struct queue_message **out)
{
    *out = NULL;
    if (!queue_id_valid(id))
        return ERR_INVAL;
    MDB_txn *txn;
    int err = queue_rtxn_begin(q, &txn);
    if (err)
        return err;
    MDB_val k = {QUEUE_ID_LEN, (void *)id}, v;
    int rc = mdb_get(txn, q->dbi[QDB_MSG], &k, &v);
    if (rc == 0)
        err = load_message(q, txn, id, &v, out);
    else
        err = queue_mdb_err(rc);
    queue_rtxn_end(q, txn);
    return err;
}

int queue_list(struct queue *q, const char *after, queue_list_cb cb, void *arg)
{
    MDB_txn *txn;
    int err = queue_rtxn_begin(q, &txn);
    if (err)
        return err;
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, q->dbi[QDB_MSG], &cur)) {
        queue_rtxn_end(q, txn);
        return ERR_IO;
    }
    MDB_val k, v;
    int rc;
    if (after && *after) {
        k.mv_size = strlen(after);
        k.mv_data = (void *)after;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (rc == 0 && k.mv_size == strlen(after) && memcmp(k.mv_data, after, k.mv_size) == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    } else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
    int ret = 0;
    size_t bad = 0;
    while (rc == 0) {
        struct queue_message *m = NULL;
        char id[QUEUE_ID_LEN + 1];
        int e = ERR_CORRUPT;
        if (k.mv_size == QUEUE_ID_LEN) {
            memcpy(id, k.mv_data, QUEUE_ID_LEN);
            id[QUEUE_ID_LEN] = 0;
            e = load_message(q, txn, id, &v, &m);
        }
        if (e == ERR_NOMEM) {
            ret = e;
            break;
        }
        if (e) {
            bad++;
        } else {
            ret = cb(arg, m);
            queue_message_free(m);
            if (ret)
                break;
        }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (ret == 0 && rc != 0 && rc != MDB_NOTFOUND)
        ret = queue_mdb_err(rc);
    mdb_cursor_close(cur);
    queue_rtxn_end(q, txn);
    if (ret == 0 && bad) {
        log_warn("queue", "%zu message records do not decode", bad);
        ret = ERR_CORRUPT;
    }
    return ret;
}

/* The body of message id (record m) from offset: the prefix (chunk 0 of a
 * QREC_F_PREFIX record, any length), then chunks of QUEUE_CHUNK octets but
 * the last (numbered from 1 after a prefix, else from 0). */
static int body_copy(struct queue *q, MDB_txn *txn, const char *id, const struct qrec_msg *m,
                     uint64_t offset, void *dst, size_t cap, size_t *got)
{
    uint8_t kb[QKEY_RCPT_LEN];
    memcpy(kb, id, QUEUE_ID_LEN);
    MDB_val ck = {sizeof(kb), kb}, cv;
    uint64_t plen = 0;
    uint32_t first = 0;
    if (m->flags & QREC_F_PREFIX) {
        qkey_put_u32(kb + QUEUE_ID_LEN, 0);
        if (mdb_get(txn, q->dbi[QDB_BODY], &ck, &cv) != 0 || cv.mv_size > m->size)
            return ERR_CORRUPT;
        plen = cv.mv_size;
        first = 1;
        if (offset < plen) {
            size_t n = (size_t)(plen - offset) < cap ? (size_t)(plen - offset) : cap;
            memcpy(dst, (const char *)cv.mv_data + offset, n);
            *got = n;
            offset += n;
        }
    }
    while (offset < m->size && *got < cap) {
        uint64_t rel = offset - plen;
        uint32_t chunk = (uint32_t)(rel / QUEUE_CHUNK);
        size_t in = (size_t)(rel % QUEUE_CHUNK);
        uint64_t want_len = m->size - plen - (uint64_t)chunk * QUEUE_CHUNK;
        if (want_len > QUEUE_CHUNK)
            want_len = QUEUE_CHUNK;
        qkey_put_u32(kb + QUEUE_ID_LEN, first + chunk);
        if (mdb_get(txn, q->dbi[QDB_BODY], &ck, &cv) != 0 || cv.mv_size != want_len)
            return ERR_CORRUPT;
        size_t n = cv.mv_size - in;
        if (n > cap - *got)
            n = cap - *got;
        memcpy((char *)dst + *got, (const char *)cv.mv_data + in, n);
        *got += n;
        offset += n;
    }
    return 0;
}

int queue_body_read(struct queue *q, const char *id, uint64_t offset, void *dst, size_t cap,
                    size_t *got)
{
    *got = 0;
    if (!queue_id_valid(id))
        return ERR_INVAL;
    MDB_txn *txn;
    int err = queue_rtxn_begin(q, &txn);
    if (err)
        return err;
    MDB_val k = {QUEUE_ID_LEN, (void *)id}, v;
    struct qrec_msg rm;
    int rc = mdb_get(txn, q->dbi[QDB_MSG], &k, &v);
    if (rc) {
        err = queue_mdb_err(rc);
    } else if (qrec_msg_decode(v.mv_data, v.mv_size, &rm)) {
        err = ERR_CORRUPT;
    } else {
        err = body_copy(q, txn, id, &rm, offset, dst, cap, got);
    }
    queue_rtxn_end(q, txn);
    return err;
}

int queue_stats(struct queue *q, struct queue_stats *out)
{
    memset(out, 0, sizeof(*out));
    MDB_txn *txn;
    int err = queue_rtxn_begin(q, &txn);
    if (err)
        return err;
    MDB_stat st;
    mdb_stat(txn, q->dbi[QDB_MSG], &st);
    out->messages = st.ms_entries;
    MDB_envinfo info;
    mdb_env_info(q->env, &info);
    out->map_size = info.me_mapsize;
    mdb_env_stat(q->env, &st);
    out->map_used = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
    out->commits = __atomic_load_n(&q->commits, __ATOMIC_RELAXED);
    mdb_stat(txn, q->dbi[QDB_BODY], &st);
    out->chunks = st.ms_entries;
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, q->dbi[QDB_META], &cur) == 0) {
        MDB_val k = {QKEY_STAGE_LEN, QKEY_STAGE}, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && k.mv_size > QKEY_STAGE_LEN &&
               memcmp(k.mv_data, QKEY_STAGE, QKEY_STAGE_LEN) == 0) {
            out->stages++;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
    }
    if (mdb_cursor_open(txn, q->dbi[QDB_RCPT], &cur) == 0) {
        MDB_val k, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        while (rc == 0) {
            struct qrec_rcpt r;
            if (qrec_rcpt_decode(v.mv_data, v.mv_size, &r) == 0)
                out->rcpts[r.state]++;
            else
                err = ERR_CORRUPT;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
    }
    queue_rtxn_end(q, txn);
    return err;
}

int queue_next_due(struct queue *q, int64_t *when_ms)
{
    MDB_txn *txn;
    int err = queue_rtxn_begin(q, &txn);
    if (err)
        return err;
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, q->dbi[QDB_SCHED], &cur)) {
        queue_rtxn_end(q, txn);
        return ERR_IO;
    }
    MDB_val k, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    if (rc == 0 && k.mv_size == QKEY_SCHED_LEN)
        *when_ms = (int64_t)qkey_get_u64(k.mv_data);
    else
        err = rc == 0 ? ERR_CORRUPT : queue_mdb_err(rc);
    mdb_cursor_close(cur);
    queue_rtxn_end(q, txn);
    return err;
}
