/*
 * pause.c - pausing and resuming delivery, to every destination or to one
 * domain, as the operator asks through the control socket.
 *
 * Pause: a table of at most PAUSE_MAX entries, one for "everything" and one
 * per domain, each with a reason and an optional end. The engine asks
 * deliver_paused() before it leases (everything paused: nothing is leased)
 * and when it files a leased recipient (its domain paused: the recipient is
 * given back with queue_postpone, not counted as an attempt, due again at
 * the pause's end or in PAUSE_RECHECK_MS, whichever is first). Sessions in
 * progress finish. Resuming a domain makes its waiting mail due now
 * (queue_retry of each message with a queued or deferred recipient there).
 *
 * The table survives restarts and crashes: every change rewrites
 * <queue_directory>/pauses (pausefile.c's format) by the usual atomic
 * replace - a temporary file, fsync, rename, fsync of the directory - on a
 * worker thread, and the operator's request is answered only after that,
 * so "paused" means "paused on disk". A write that fails leaves the change
 * in force in memory and says so. The file is read when delivery starts,
 * before the first lease; pauses that ended meanwhile are dropped, damaged
 * lines are logged with file and line and skipped (never fatal: the worst
 * a damaged file can do is leave a domain unpaused).
 *
 * Threads: the table is the loop thread's; the worker sees only the text
 * made from it (sv->text) while sv->busy.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "conf.h"
#include "deliver_int.h"
#include "delivery.h"
#include "queue.h"

#undef QCOMP
#define QCOMP "qmgr"

/* ---- pause ------------------------------------------------------------------ */

/* Saving the table: the text is written on a worker thread; requests that
 * come while a write runs are folded into the next one. Generations: each
 * change of the table makes a new one; a waiter is answered when a write
 * of its generation (or a later one) has ended. */
struct save_waiter {
    struct save_waiter *next;
    uint64_t gen;
    delivery_pause_cb cb;
    void *arg;
};

static void save_start(struct delivery *dl);

/* Where the table goes: queue_directory of the engine's configuration
 * (which a reload cannot change). */
static void sv_init(struct delivery *dl)
{
    struct pause_state *sv = &dl->pause;
    sv->work.data = dl;
    str_copy(sv->dir, dl->conf->queue_directory, sizeof(sv->dir));
    snprintf(sv->path, sizeof(sv->path), "%s/%s", sv->dir, PAUSE_FILE);
    snprintf(sv->tmp, sizeof(sv->tmp), "%s.tmp", sv->path);
}

/* Worker thread: replace the file atomically and durably. Touches only
 * sv->text, the paths and the result fields while sv->busy. */
static void save_work(uv_work_t *w)
{
    struct delivery *dl = w->data;
    struct pause_state *sv = &dl->pause;
    sv->status = 0;
    sv->why[0] = '\0';
    const char *step = "create";
    int fd = open(sv->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    bool ok = fd >= 0;
    if (ok && fchmod(fd, 0640) != 0) /* whatever the umask: the group reads it */
        ok = false, step = "chmod";
    for (size_t off = 0; ok && off < sv->text.len;) {
        ssize_t n = write(fd, sv->text.data + off, sv->text.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            ok = false, step = "write";
            break;
        }
        off += (size_t)n;
    }
    if (ok && fsync(fd) != 0)
        ok = false, step = "fsync";
    if (fd >= 0 && close(fd) != 0 && ok)
        ok = false, step = "close";
    bool renamed = false;
    if (ok && rename(sv->tmp, sv->path) != 0)
        ok = false, step = "rename";
    if (ok) {
        renamed = true;
        /* The new name must be durable too. */
        int dfd = open(sv->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) != 0)
            ok = false, step = "fsync directory";
        if (dfd >= 0)
            close(dfd);
    }
    if (!ok) {
        int e = errno;
        if (!renamed)
            unlink(sv->tmp);
        sv->status = ERR_IO;
        snprintf(sv->why, sizeof(sv->why), "%s %.200s: %.60s", step, renamed ? sv->dir : sv->tmp,
                 strerror(e));
    }
}

static void save_after(uv_work_t *w, int status)
{
    (void)status;
    struct delivery *dl = w->data;
    struct pause_state *sv = &dl->pause;
    sv->busy = false;
    int rc = sv->status;
    char why[sizeof(sv->why)];
    str_copy(why, sv->why, sizeof(why));
    if (rc != 0)
        log_warn(QCOMP, "cannot save the pauses: %s; they are in force until convoyd stops", why);
    /* Detach the answered waiters first: a callback may pause again. */
    struct save_waiter *done = NULL, **pp = &sv->waiters;
    while (*pp) {
        struct save_waiter *x = *pp;
        if (x->gen <= sv->writing) {
            *pp = x->next;
            x->next = done;
            done = x;
        } else {
            pp = &x->next;
        }
    }
    if (sv->wanted > sv->writing)
        save_start(dl);
    while (done) {
        struct save_waiter *x = done;
        done = x->next;
        x->cb(x->arg, rc, rc ? why : NULL);
        free(x);
    }
    deliver_maybe_free(dl); /* a closed engine waits for its last write */
}

static void save_start(struct delivery *dl)
{
    struct pause_state *sv = &dl->pause;
    if (sv->busy || !sv->path[0] || sv->wanted == sv->writing)
        return;
    buf_free(&sv->text);
    buf_init(&sv->text, (PAUSE_MAX + 4) * (PAUSE_DOMAIN_MAX + PAUSE_REASON_MAX + 64));
    sv->writing = sv->wanted;
    if (pause_file_format(sv->recs, sv->n, &sv->text) != 0) {
        sv->status = ERR_NOMEM;
        str_copy(sv->why, "out of memory", sizeof(sv->why));
        sv->busy = true;
        save_after(&sv->work, 0);
        return;
    }
    sv->busy = true;
    if (uv_queue_work(dl->loop, &sv->work, save_work, save_after) != 0) {
        sv->status = ERR_IO;
        str_copy(sv->why, "cannot start the writer", sizeof(sv->why));
        save_after(&sv->work, 0);
    }
}

/* The table changed: write it; cb (may be NULL) hears when it is on disk. */
static int pause_save(struct delivery *dl, delivery_pause_cb cb, void *arg)
{
    struct pause_state *sv = &dl->pause;
    sv->wanted++;
    if (cb) {
        struct save_waiter *x = calloc(1, sizeof(*x));
        if (!x)
            return ERR_NOMEM;
        x->gen = sv->wanted;
        x->cb = cb;
        x->arg = arg;
        x->next = sv->waiters;
        sv->waiters = x;
    }
    save_start(dl);
    return 0;
}

size_t deliver_pause_busy(const struct delivery *dl)
{
    const struct pause_state *sv = &dl->pause;
    size_t n = sv->busy ? 1 : 0;
    for (struct save_waiter *x = sv->waiters; x; x = x->next)
        n++;
    return n;
}

struct load_ctx {
    const char *path;
    unsigned problems;
};

static void load_problem(void *arg, unsigned line, const char *why)
{
    struct load_ctx *lc = arg;
    lc->problems++;
    log_warn(QCOMP, "%s:%u: %s", lc->path, line, why);
}

#define PAUSE_FILE_MAX (4u << 20)

void deliver_pause_load(struct delivery *dl)
{
    struct pause_state *sv = &dl->pause;
    sv_init(dl);
    sv->n = 0;
    struct buf text;
    buf_init(&text, PAUSE_FILE_MAX);
    int rc = file_read_all(sv->path, &text);
    if (rc == ERR_IO && errno == ENOENT) {
        buf_free(&text);
        return;
    }
    if (rc == ERR_IO)
        log_warn(QCOMP, "%s: %s; no pauses restored", sv->path, strerror(errno));
    else if (rc == ERR_TOOBIG)
        log_warn(QCOMP, "%s: larger than %u bytes, not a pause file; no pauses restored", sv->path,
                 PAUSE_FILE_MAX);
    struct load_ctx lc = {.path = sv->path};
    unsigned expired = 0;
    struct pause_rec *recs = rc == 0 ? calloc(PAUSE_MAX, sizeof(*recs)) : NULL;
    size_t n = recs ? pause_file_parse(text.data ? text.data : "", text.len, recs, PAUSE_MAX,
                                       load_problem, &lc)
                    : 0;
    buf_free(&text);
    int64_t now = dl_now(dl);
    for (size_t i = 0; i < n; i++) {
        const struct pause_rec *r = &recs[i];
        const char *what = r->domain[0] ? r->domain : "all delivery";
        if (r->until_ms && r->until_ms <= now) {
            log_info(QCOMP, "pause of %s ended while convoyd was not running: %s", what, r->reason);
            expired++;
            continue;
        }
        sv->recs[sv->n++] = *r;
        char left[32] = "";
        if (r->until_ms)
            time_format_duration((r->until_ms - now + 999) / 1000, left, sizeof(left));
        log_info(QCOMP, "delivery %s%s paused%s%s (restored from %s): %s",
                 r->domain[0] ? "to " : "", r->domain, r->until_ms ? " for " : "", left, sv->path,
                 r->reason);
    }
    free(recs);
    /* Ended pauses leave the file now; a damaged file is left as it is
     * for the operator to see, until the next change replaces it. */
    if (expired && !lc.problems && rc == 0)
        pause_save(dl, NULL, NULL);
}

static void pause_expire(struct delivery *dl, int64_t now_ms)
{
    struct pause_state *sv = &dl->pause;
    bool changed = false;
    for (size_t i = 0; i < sv->n;) {
        if (sv->recs[i].until_ms && sv->recs[i].until_ms <= now_ms) {
            log_info(QCOMP, "pause of %s ended",
                     sv->recs[i].domain[0] ? sv->recs[i].domain : "delivery");
            sv->recs[i] = sv->recs[--sv->n];
            changed = true;
            continue;
        }
        i++;
    }
    if (changed)
        pause_save(dl, NULL, NULL);
}

bool deliver_paused(struct delivery *dl, const char *domain, int64_t now_ms, int64_t *until_ms)
{
    struct pause_state *sv = &dl->pause;
    pause_expire(dl, now_ms);
    for (size_t i = 0; i < sv->n; i++) {
        if (sv->recs[i].domain[0] == 0 || (domain && strcasecmp(sv->recs[i].domain, domain) == 0)) {
            if (until_ms)
                *until_ms = sv->recs[i].until_ms;
            return true;
        }
    }
    return false;
}

bool delivery_pause_domain_ok(const char *s)
{
    return pause_domain_ok(s);
}

int delivery_pause(struct delivery *dl, const char *domain, int64_t until_ms, const char *reason,
                   delivery_pause_cb cb, void *arg)
{
    if (!domain)
        domain = "";
    if (domain[0] && !pause_domain_ok(domain))
        return ERR_INVAL;
    if (!dl || dl->closing)
        return ERR_CLOSED;
    struct pause_state *sv = &dl->pause;
    int64_t now = dl_now(dl);
    pause_expire(dl, now);
    struct pause_rec *e = NULL;
    for (size_t i = 0; i < sv->n && !e; i++)
        if (strcasecmp(sv->recs[i].domain, domain) == 0)
            e = &sv->recs[i];
    if (!e) {
        if (sv->n == PAUSE_MAX)
            return ERR_TOOBIG;
        e = &sv->recs[sv->n++];
        memset(e, 0, sizeof(*e));
        str_copy(e->domain, domain, sizeof(e->domain));
        for (char *p = e->domain; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    }
    e->since_ms = now;
    e->until_ms = until_ms;
    pause_reason_clean(reason, e->reason, sizeof(e->reason));
    char left[32] = "";
    if (until_ms)
        time_format_duration((until_ms - now + 999) / 1000, left, sizeof(left));
    log_info(QCOMP, "delivery %s%s paused%s%s: %s", domain[0] ? "to " : "", domain[0] ? domain : "",
             until_ms ? " for " : "", left, e->reason);
    deliver_pause_changed(dl);
    return pause_save(dl, cb, arg);
}

static void retry_done(void *arg, int status)
{
    (void)arg;
    (void)status;
}

struct resume_scan {
    struct delivery *dl;
    char (*domains)[PAUSE_DOMAIN_MAX];
    size_t n;
    size_t retried;
};

static int resume_one(void *arg, const struct queue_message *qm)
{
    struct resume_scan *s = arg;
    for (size_t i = 0; i < qm->n_rcpts; i++) {
        const struct queue_rcpt *r = &qm->rcpts[i];
        if (r->state != QUEUE_RCPT_QUEUED && r->state != QUEUE_RCPT_DEFERRED)
            continue;
        char d[256];
        addr_domain(r->addr, d, sizeof(d));
        for (size_t k = 0; k < s->n; k++) {
            if (s->domains[k][0] == 0 || strcasecmp(s->domains[k], d) == 0) {
                if (queue_retry(s->dl->q, qm->id, retry_done, NULL) == 0)
                    s->retried++;
                return 0;
            }
        }
    }
    return 0;
}

int delivery_resume(struct delivery *dl, const char *domain, size_t *n_resumed,
                    delivery_pause_cb cb, void *arg)
{
    *n_resumed = 0;
    if (!dl || dl->closing)
        return ERR_CLOSED;
    struct pause_state *sv = &dl->pause;
    pause_expire(dl, dl_now(dl));
    struct resume_scan s = {.dl = dl};
    s.domains = calloc(sv->n ? sv->n : 1, sizeof(*s.domains));
    if (!s.domains)
        return ERR_NOMEM;
    bool had_domains = false;
    for (size_t i = 0; i < sv->n;) {
        if (domain && strcasecmp(sv->recs[i].domain, domain) != 0) {
            i++;
            continue;
        }
        if (sv->recs[i].domain[0]) {
            str_copy(s.domains[s.n++], sv->recs[i].domain, sizeof(s.domains[0]));
            had_domains = true;
        }
        log_info(QCOMP, "delivery %s%s resumed", sv->recs[i].domain[0] ? "to " : "",
                 sv->recs[i].domain);
        sv->recs[i] = sv->recs[--sv->n];
        (*n_resumed)++;
    }
    /* Mail of a paused domain was postponed: make it due now. */
    if (had_domains && dl->q)
        queue_list(dl->q, NULL, resume_one, &s);
    free(s.domains);
    deliver_pause_changed(dl);
    return pause_save(dl, cb, arg);
}

void delivery_pause_status(struct delivery *dl, json_t *status)
{
    json_t *a = json_array();
    if (!dl) {
        json_object_set_new(status, "paused", a);
        return;
    }
    struct pause_state *sv = &dl->pause;
    int64_t now = dl_now(dl);
    pause_expire(dl, now);
    for (size_t i = 0; i < sv->n; i++) {
        const struct pause_rec *e = &sv->recs[i];
        json_t *o = json_object();
        json_object_set_new(o, "domain", e->domain[0] ? json_string(e->domain) : json_null());
        json_object_set_new(o, "reason", json_string(e->reason));
        json_object_set_new(o, "since", json_integer((json_int_t)(e->since_ms / 1000)));
        json_object_set_new(
            o, "until", e->until_ms ? json_integer((json_int_t)(e->until_ms / 1000)) : json_null());
        json_object_set_new(o, "remaining",
                            e->until_ms ? json_integer((json_int_t)((e->until_ms - now) / 1000))
                                        : json_null());
        json_array_append_new(a, o);
    }
    json_object_set_new(status, "paused", a);
}

/* ---- the scheduler's side ----------------------------------------------------------------- */

#define PAUSE_RECHECK_MS (5 * 60000)

/* Everything paused: lease nothing; look again when the pause ends. */
bool pause_all(struct delivery *dl)
{
    int64_t until = 0, now = dl_now(dl);
    if (!deliver_paused(dl, NULL, now, &until))
        return false;
    if (until)
        uv_timer_start(&dl->due_timer, sched_on_due_timer, (uint64_t)(until - now) + 1, 0);
    return true;
}

/* A leased recipient of a paused domain goes back to the queue, due at the
 * pause's end (or at the next recheck), without counting an attempt. */
bool pause_postpone(struct delivery *dl, const struct queue_due *due, int64_t now)
{
    char dom[256];
    int64_t until = 0;
    addr_domain(due->addr, dom, sizeof(dom));
    if (!deliver_paused(dl, dom, now, &until))
        return false;
    int64_t when = now + PAUSE_RECHECK_MS;
    if (until && until < when)
        when = until;
    struct req *r = dl_req_new(dl, due->id, due->rcpt, "unlease");
    if (r && queue_postpone(dl->q, due->id, due->rcpt, when, dl_req_done, r) == 0)
        dl->pending_reqs++;
    else
        free(r);
    dl->inflight--;
    return true;
}

/* Is every recipient of job j paused? */
static bool job_paused(struct delivery *dl, const struct job *j, int64_t now)
{
    for (size_t i = 0; i < j->n; i++) {
        char dom[256];
        addr_domain(j->r[i].addr, dom, sizeof(dom));
        if (!deliver_paused(dl, dom, now, NULL))
            return false;
    }
    return j->n > 0;
}

void deliver_pause_changed(struct delivery *dl)
{
    if (!dl || dl->closing || dl->stopping)
        return;
    int64_t now = dl_now(dl);
    /* Jobs waiting for a connection are not started yet: give them back. */
    for (struct dest *d = dl->dests; d; d = d->next) {
        struct job *keep = NULL, *keep_tail = NULL, *j;
        size_t kept = 0;
        while ((j = dest_pop(d))) {
            if (!job_paused(dl, j, now)) {
                if (keep_tail)
                    keep_tail->next = j;
                else
                    keep = j;
                keep_tail = j;
                kept++;
                continue;
            }
            for (size_t i = 0; i < j->n; i++) {
                /* Counted in inflight while it waited; postponing counts
                 * it out. */
                struct queue_due due = {.rcpt = j->r[i].idx, .addr = j->r[i].addr};
                str_copy(due.id, j->id, sizeof(due.id));
                pause_postpone(dl, &due, now);
            }
            job_free(j);
        }
        d->head = keep;
        d->tail = keep_tail;
        d->njobs = kept;
    }
    if (!deliver_paused(dl, NULL, now, NULL))
        sched_lease_in(dl, 0);
}
