/*
 * deliver_admin.c - what the operator asks of the delivery engine through
 * the control socket: bounce a message now (a DSN to its sender, then the
 * recipients are marked bounced), and pause or resume delivery, to every
 * destination or to one domain.
 *
 * Bounce (RFC 3464 via bounce.c, as an expiry bounce is made): the DSN says
 * "Action: failed", "Status: 5.0.0" and the operator's reason; it is queued
 * first, and only after that commit are the recipients marked bounced, so a
 * failure leaves the message as it was. Recipients in flight (ACTIVE) are
 * left alone: their attempt is going on. No DSN for a null sender or for
 * recipients whose NOTIFY excludes FAILURE (they are bounced silently).
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
    int fd = open(sv->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            log_warn(QCOMP, "%s: %s; no pauses restored", sv->path, strerror(errno));
        return;
    }
    struct buf text;
    buf_init(&text, PAUSE_FILE_MAX);
    char chunk[8192];
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            log_warn(QCOMP, "%s: %s; no pauses restored", sv->path, strerror(errno));
            rc = ERR_IO;
            break;
        }
        if (n == 0)
            break;
        if (buf_append(&text, chunk, (size_t)n) != 0) {
            log_warn(QCOMP, "%s: larger than %u bytes, not a pause file; no pauses restored",
                     sv->path, PAUSE_FILE_MAX);
            rc = ERR_TOOBIG;
            break;
        }
    }
    close(fd);
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
        deliver_domain_of(r->addr, d, sizeof(d));
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

/* ---- bounce ------------------------------------------------------------------ */

struct abounce {
    struct delivery *dl;
    char id[QUEUE_ID_LEN + 1];
    char text[600];
    struct buf dsn;
    uint32_t *rcpts;
    size_t n;
    size_t pending;
    int status;
    delivery_admin_cb cb;
    void *arg;
};

static void abounce_free(struct abounce *b)
{
    buf_free(&b->dsn);
    free(b->rcpts);
    free(b);
}

static void on_rcpt_bounced(void *arg, int status)
{
    struct abounce *b = arg;
    if (status != 0 && status != ERR_NOTFOUND && b->status == 0)
        b->status = status;
    if (--b->pending > 0)
        return;
    b->cb(b->arg, b->status, b->n);
    abounce_free(b);
}

/* The DSN is committed (or there is none): mark the recipients bounced.
 * Returns how many requests were made; with none, nothing was called and
 * b is still the caller's. */
static size_t mark_bounced(struct abounce *b)
{
    struct queue_result res = {.smtp_code = 0,
                               .dsn = "5.0.0",
                               .text = b->text,
                               .mx = "",
                               .ip = "",
                               .tls = "",
                               .sts_mode = "",
                               .sts_id = ""};
    size_t made = 0;
    b->pending = 1; /* held until every request is made */
    for (size_t i = 0; i < b->n; i++) {
        if (queue_bounce(b->dl->q, b->id, b->rcpts[i], &res, on_rcpt_bounced, b) == 0)
            made++, b->pending++;
        else if (b->status == 0)
            b->status = ERR_CLOSED;
    }
    if (made)
        on_rcpt_bounced(b, 0); /* the last callback is one of the requests' */
    return made;
}

static void on_admin_dsn_queued(void *arg, int status, const char *dsn_id)
{
    struct abounce *b = arg;
    if (status != 0) {
        log_warn(QCOMP, "%s: cannot queue the non-delivery notification: %s", b->id,
                 err_str(status));
        b->cb(b->arg, status, 0);
        abounce_free(b);
        return;
    }
    log_info(QCOMP, "%s: sender non-delivery notification: %s", b->id, dsn_id);
    buf_free(&b->dsn);
    if (mark_bounced(b) == 0) {
        b->cb(b->arg, ERR_CLOSED, 0);
        abounce_free(b);
    }
}

int delivery_admin_bounce(struct delivery *dl, const char *id, const char *reason,
                          delivery_admin_cb cb, void *arg)
{
    if (!dl || dl->closing || !dl->q || !cb)
        return ERR_CLOSED;
    struct queue_message *qm = NULL;
    int rc = queue_message_read(dl->q, id, &qm);
    if (rc != 0)
        return rc;
    struct abounce *b = calloc(1, sizeof(*b));
    struct dsn_rcpt *drs = calloc(qm->n_rcpts, sizeof(*drs));
    if (b)
        b->rcpts = calloc(qm->n_rcpts, sizeof(*b->rcpts));
    if (!b || !drs || !b->rcpts) {
        if (b)
            free(b->rcpts);
        free(b);
        free(drs);
        queue_message_free(qm);
        return ERR_NOMEM;
    }
    b->dl = dl;
    b->cb = cb;
    b->arg = arg;
    str_copy(b->id, id, sizeof(b->id));
    snprintf(b->text, sizeof(b->text), "bounced by the mail administrator%s%.500s",
             reason && reason[0] ? ": " : "", reason ? reason : "");
    buf_init(&b->dsn, DSN_MAX);
    size_t k = 0;
    int64_t now = dl_now(dl);
    for (size_t i = 0; i < qm->n_rcpts; i++) {
        const struct queue_rcpt *r = &qm->rcpts[i];
        if (r->state != QUEUE_RCPT_QUEUED && r->state != QUEUE_RCPT_DEFERRED &&
            r->state != QUEUE_RCPT_HELD)
            continue;
        if (r->state == QUEUE_RCPT_HELD && r->next_ms > now)
            continue; /* held while its attempt is in flight */
        b->rcpts[b->n++] = r->index;
        char delay[24];
        deliver_format_delay(now - qm->env.arrival_ms, delay, sizeof(delay));
        log_info("smtp",
                 "%s: to=<%s>, relay=none, delay=%s, delays=%s/0/0/0, dsn=5.0.0, "
                 "status=bounced (%s)",
                 id, r->addr, delay, delay, b->text);
        if (!deliver_wants_failure_dsn(r->notify))
            continue;
        drs[k].addr = r->addr;
        drs[k].orcpt = r->orcpt[0] ? r->orcpt : NULL;
        drs[k].action = "failed";
        drs[k].status = "5.0.0";
        drs[k].remote_mta = r->has_result && r->last.mx[0] ? r->last.mx : NULL;
        drs[k].diag = NULL;
        drs[k].reason = b->text;
        drs[k].last_attempt_ms = r->has_result ? r->last.when_ms : 0;
        k++;
    }
    if (b->n == 0) {
        free(drs);
        queue_message_free(qm);
        abounce_free(b);
        return ERR_AGAIN;
    }
    if (!qm->env.sender[0] || k == 0) {
        /* RFC 3464 / RFC 5321 6.1: never a DSN to the null sender. */
        free(drs);
        queue_message_free(qm);
        if (mark_bounced(b) == 0) {
            abounce_free(b);
            return ERR_CLOSED;
        }
        return 0;
    }
    char *body = malloc(qm->env.size + 1);
    size_t off = 0;
    while (body && off < qm->env.size) {
        size_t got = 0;
        if (queue_body_read(dl->q, id, off, body + off, qm->env.size - off, &got) != 0 || got == 0)
            break;
        off += got;
    }
    rc = !body ? ERR_NOMEM : off != qm->env.size ? ERR_CORRUPT : 0;
    const char *host = dl->helo;
    struct dsn_msg d = {
        .reporting_mta = host,
        .queue_id = id,
        .sender = qm->env.sender,
        .envid = qm->env.envid,
        .arrival_ms = qm->env.arrival_ms,
        .now_ms = now,
        .ret_full = qm->env.ret == QUEUE_RET_FULL,
        .original = {body ? body : "", off},
        .rcpts = drs,
        .nrcpt = k,
    };
    if (rc == 0)
        rc = dsn_build(&d, &b->dsn);
    if (rc == ERR_TOOBIG && d.ret_full) {
        buf_reset(&b->dsn);
        d.ret_full = false;
        rc = dsn_build(&d, &b->dsn);
    }
    if (rc == 0) {
        struct queue_envelope env = {.sender = "",
                                     .client_name = "localhost",
                                     .client_addr = "127.0.0.1",
                                     .helo = host,
                                     .auth_user = "",
                                     .tls = "",
                                     .envid = "",
                                     .ret = QUEUE_RET_NONE,
                                     .flags = 0};
        struct queue_rcpt_in to = {.addr = qm->env.sender, .orcpt = NULL, .notify = 0};
        rc = queue_submit(dl->q, &env, &to, 1, b->dsn.data, b->dsn.len, on_admin_dsn_queued, b);
    }
    free(body);
    free(drs);
    queue_message_free(qm);
    if (rc != 0) {
        abounce_free(b);
        return rc;
    }
    return 0;
}
