/*
 * dsn.c - the one DSN path (RFC 3464): failure bounces, expiry bounces and
 * the operator's bounce all go through here. Recipients whose NOTIFY
 * excludes FAILURE are left out of the DSN; none is sent to the null sender
 * (RFC 5321 6.1); a DSN too big with RET=FULL is built again with the
 * headers only; it is submitted from the null sender, and only after it is
 * committed are the recipients marked bounced. If it cannot be queued the
 * recipients are deferred instead, so nothing is lost.
 *
 * Delay warnings (delay_warning_time) take the same path with DSN_DELAYED:
 * one per message, ever - after the DSN is committed the message is marked
 * QUEUE_F_DELAY_WARNED in the queue (a restart does not warn again), and
 * while that is in flight the engine keeps the message's id in a list so
 * two jobs of one message cannot both warn.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>

#include "conf.h"
#include "deliver_int.h"
#include "delivery.h"
#include "dns.h"
#include "policy.h"
#include "queue.h"
#include "smtp.h"
#include "tls.h"

/* ---- the DSN path ---------------------------------------------------------------- */

/* A DSN in flight: the items, the message built, what to do after. */
struct dsn_req {
    struct delivery *dl;
    char id[QUEUE_ID_LEN + 1];
    enum dsn_kind kind;
    struct dsn_opts opt;
    struct buf dsn;
    size_t n; /* items */
    struct dsn_item *items;
    size_t report_n; /* recipients marked, for the callback */
    size_t pending;  /* marking requests in flight (+1 while they are made) */
    int status;      /* the first failure to mark a recipient */
};

void dsn_items_free(struct dsn_item *items, size_t n)
{
    if (!items)
        return;
    for (size_t i = 0; i < n; i++) {
        free(items[i].text);
        free(items[i].diag);
    }
    free(items);
}

static void dsn_req_free(struct dsn_req *b)
{
    dsn_items_free(b->items, b->n);
    buf_free(&b->dsn);
    free(b);
}

/* The last marking request answered (or none could be made). */
static void dsn_req_done(struct dsn_req *b)
{
    struct delivery *dl = b->dl;
    if (b->opt.cb)
        b->opt.cb(b->opt.arg, b->status, b->report_n);
    dsn_req_free(b);
    dl->pending_reqs--;
    deliver_maybe_free(dl);
}

static void on_marked(void *arg, int status)
{
    struct dsn_req *b = arg;
    if (status != 0 && status != ERR_NOTFOUND && b->status == 0)
        b->status = status;
    if (--b->pending == 0)
        dsn_req_done(b);
}

/*
 * Record what became of the recipients: bounced (the DSN is committed, or
 * none is due), or - when the DSN could not be queued and the caller does
 * not keep them as they were - deferred with 4.3.0 and why. Returns how
 * many requests were made; the request ends with the last answer.
 */
static size_t dsn_mark(struct dsn_req *b, bool as_bounce, const char *why, bool sync)
{
    struct delivery *dl = b->dl;
    size_t made = 0;
    b->report_n = b->n;
    b->pending = 1; /* held until every request is made */
    for (size_t i = 0; i < b->n && dl->q; i++) {
        struct dsn_item *it = &b->items[i];
        char text[1200];
        if (as_bounce)
            str_copy(text, it->text ? it->text : "", sizeof(text));
        else
            snprintf(text, sizeof(text), "%s (bounce not sent: %s)", it->text ? it->text : "", why);
        struct queue_result res = {.smtp_code = it->code,
                                   .dsn = as_bounce ? it->dsn : "4.3.0",
                                   .text = text,
                                   .mx = it->mx,
                                   .ip = it->ip,
                                   .tls = it->tls,
                                   .sts_mode = "",
                                   .sts_id = ""};
        int rc = as_bounce ? queue_bounce(dl->q, b->id, it->rcpt, &res, on_marked, b)
                           : queue_defer(dl->q, b->id, it->rcpt, &res, on_marked, b);
        if (rc == 0) {
            made++;
            b->pending++;
        } else {
            log_warn(QCOMP, "%s: cannot record %s of recipient %u: %s", b->id,
                     as_bounce ? "bounce" : "defer", (unsigned)it->rcpt, err_str(rc));
            if (b->status == 0)
                b->status = rc;
        }
    }
    if (made == 0 && b->n > 0) {
        if (b->status == 0)
            b->status = ERR_CLOSED;
        b->report_n = 0;
        if (sync && b->opt.keep_on_error)
            b->opt.cb = NULL; /* the caller hears of it from the return value */
    }
    on_marked(b, 0); /* the last answer may be this one */
    return made;
}

static void on_dsn_queued(void *arg, int status, const char *dsn_id)
{
    struct dsn_req *b = arg;
    const char *what = b->kind == DSN_DELAYED ? "delay" : "non-delivery";
    if (status == 0) {
        log_info(QCOMP, "%s: sender %s notification: %s", b->id, what, dsn_id);
        if (b->kind == DSN_FAILED) {
            dsn_mark(b, true, NULL, false);
            return;
        }
    } else {
        log_warn(QCOMP, "%s: cannot queue the %s notification: %s", b->id, what, err_str(status));
        if (b->kind == DSN_FAILED && !b->opt.keep_on_error) {
            dsn_mark(b, false, err_str(status), false);
            return;
        }
        b->status = status; /* nothing was marked */
    }
    dsn_req_done(b);
}

/* Does a recipient's NOTIFY ask for this kind of DSN (RFC 3461 4.1)? No
 * NOTIFY at all: failures are reported, and delays too - RFC 3461 4.1
 * says the default is FAILURE "and possibly DELAY"; Postfix sends delay
 * warnings then, and so do we. NEVER excludes both. */
bool dsn_wanted(enum dsn_kind kind, unsigned notify)
{
    if (kind == DSN_DELAYED)
        return notify == 0 || (notify & QUEUE_NOTIFY_DELAY) != 0;
    return deliver_wants_failure_dsn(notify);
}

int dsn_send(struct delivery *dl, const char *id, const struct queue_message *qm, struct view body,
             enum dsn_kind kind, struct dsn_item *items, size_t n, const struct dsn_opts *opt)
{
    struct dsn_req *b = calloc(1, sizeof(*b));
    struct dsn_rcpt *drs = calloc(n ? n : 1, sizeof(*drs));
    if (!b || !drs) {
        free(b);
        free(drs);
        dsn_items_free(items, n);
        return ERR_NOMEM;
    }
    b->dl = dl;
    str_copy(b->id, id, sizeof(b->id));
    b->kind = kind;
    if (opt)
        b->opt = *opt;
    b->items = items;
    b->n = n;
    buf_init(&b->dsn, DSN_MAX);
    dl->pending_reqs++; /* until dsn_req_done() */

    /* Which recipients get reported in the DSN. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct dsn_item *it = &items[i];
        unsigned notify = 0;
        if (qm && it->rcpt < qm->n_rcpts)
            notify = qm->rcpts[it->rcpt].notify;
        if (!dsn_wanted(kind, notify))
            continue;
        const char *orcpt = qm && it->rcpt < qm->n_rcpts ? qm->rcpts[it->rcpt].orcpt : NULL;
        drs[k++] = (struct dsn_rcpt){
            .addr = qm && it->rcpt < qm->n_rcpts ? qm->rcpts[it->rcpt].addr : "",
            .orcpt = orcpt && orcpt[0] ? orcpt : NULL,
            .action = kind == DSN_DELAYED ? "delayed" : "failed",
            .status = it->dsn,
            .remote_mta = it->remote_mta[0] ? it->remote_mta : NULL,
            .diag = it->diag && it->diag[0] ? it->diag : NULL,
            .reason = it->text,
            .last_attempt_ms = it->last_attempt_ms,
            .will_retry_until_ms = it->will_retry_until_ms,
        };
    }
    int rc = 0;
    if (!qm) {
        /* Without the message there is no DSN to write: keep the
         * recipients (deferred) rather than bounce them silently. */
        rc = ERR_NOTFOUND;
        if (kind == DSN_FAILED && !b->opt.keep_on_error) {
            free(drs);
            dsn_mark(b, false, "cannot read the message from the queue", true);
            return 0;
        }
    } else if (!qm->env.sender[0] || k == 0) {
        /* RFC 3464 / RFC 5321 6.1: never a DSN to the null sender. */
        free(drs);
        if (kind == DSN_DELAYED) {
            dsn_req_done(b);
            return 0;
        }
        if (dsn_mark(b, true, NULL, true) == 0 && b->opt.keep_on_error && b->n > 0)
            return ERR_CLOSED; /* b is gone, and the callback was not called */
        return 0;
    } else {
        struct dsn_msg d = {
            .reporting_mta = dl->helo,
            .queue_id = id,
            .sender = qm->env.sender,
            .envid = qm->env.envid,
            .arrival_ms = qm->env.arrival_ms,
            .now_ms = dl_now(dl),
            .ret_full = qm->env.ret == QUEUE_RET_FULL,
            .delayed = kind == DSN_DELAYED,
            .original = body,
            .rcpts = drs,
            .nrcpt = k,
        };
        rc = dsn_build(&d, &b->dsn);
        if (rc == ERR_TOOBIG && d.ret_full) {
            /* Too big to return whole: return the headers. */
            buf_reset(&b->dsn);
            d.ret_full = false;
            rc = dsn_build(&d, &b->dsn);
        }
        if (rc == 0 && !dl->q)
            rc = ERR_CLOSED;
        if (rc == 0) {
            /* From the null sender, to the original sender only. */
            struct queue_envelope env = {.sender = "",
                                         .client_name = "localhost",
                                         .client_addr = "127.0.0.1",
                                         .helo = dl->helo,
                                         .auth_user = "",
                                         .tls = "",
                                         .envid = "",
                                         .ret = QUEUE_RET_NONE,
                                         .flags = 0};
            struct queue_rcpt_in to = {.addr = qm->env.sender, .orcpt = NULL, .notify = 0};
            rc = queue_submit(dl->q, &env, &to, 1, b->dsn.data, b->dsn.len, on_dsn_queued, b);
        }
    }
    free(drs);
    if (rc == 0)
        return 0;
    if (b->opt.keep_on_error) {
        /* Nothing changed; the caller hears of it now. */
        b->opt.cb = NULL;
        dsn_req_done(b);
        return rc;
    }
    log_warn(QCOMP, "%s: cannot build or queue the %s notification: %s", id,
             kind == DSN_DELAYED ? "delay" : "non-delivery", err_str(rc));
    if (kind == DSN_FAILED) {
        dsn_mark(b, false, err_str(rc), true);
        return 0;
    }
    dsn_req_done(b);
    return 0;
}

/* Read a whole message body. NULL on error. */
char *dl_read_body(struct delivery *dl, const char *id, uint64_t size, size_t *len)
{
    char *body = malloc(size + 1);
    if (!body)
        return NULL;
    size_t off = 0;
    while (off < size) {
        size_t got = 0;
        int rc = queue_body_read(dl->q, id, off, body + off, size - off, &got);
        if (rc != 0 || got == 0)
            break;
        off += got;
    }
    if (off != size) {
        free(body);
        return NULL;
    }
    body[size] = '\0';
    *len = size;
    return body;
}

/* ---- delay warnings (delay_warning_time) ----------------------------------------- */

/* A delay warning in flight: from dsn_send() to the commit of the mark. */
struct delay_warning {
    struct delay_warning *next;
    struct delivery *dl;
    char id[QUEUE_ID_LEN + 1];
};

static void warning_free(struct delay_warning *w)
{
    struct delay_warning **pp = &w->dl->warnings;
    while (*pp && *pp != w)
        pp = &(*pp)->next;
    if (*pp)
        *pp = w->next;
    free(w);
}

static void on_warned_marked(void *arg, int status)
{
    struct delay_warning *w = arg;
    struct delivery *dl = w->dl;
    if (status != 0)
        log_warn(QCOMP, "%s: cannot record the delay notification: %s", w->id, err_str(status));
    warning_free(w);
    dl->pending_reqs--;
    deliver_maybe_free(dl);
}

static void on_delay_sent(void *arg, int status, size_t n)
{
    (void)n;
    struct delay_warning *w = arg;
    struct delivery *dl = w->dl;
    if (status == 0 && dl->q && queue_delay_warned(dl->q, w->id, on_warned_marked, w) == 0) {
        dl->pending_reqs++;
        return;
    }
    warning_free(w);
}

void dsn_delay_check(struct delivery *dl, const struct job *j, const struct delay_rcpt *rcpts,
                     size_t n)
{
    int64_t after_ms = dl->conf->delay_warning_time * 1000;
    /* Never to the null sender (RFC 5321 6.1, RFC 3464). */
    if (after_ms <= 0 || n == 0 || !dl->q || (j->flags & QUEUE_F_DELAY_WARNED) || !j->sender ||
        !j->sender[0])
        return;
    int64_t now = dl_now(dl);
    if (now - j->arrival_ms < after_ms)
        return;
    for (const struct delay_warning *w = dl->warnings; w; w = w->next)
        if (strcmp(w->id, j->id) == 0)
            return;
    /* The flag as committed now (the job's copy is from its lease). */
    struct queue_message *qm = NULL;
    if (queue_message_read(dl->q, j->id, &qm) != 0) {
        queue_message_free(qm);
        return;
    }
    struct dsn_item *items = NULL;
    size_t k = 0;
    if (!(qm->env.flags & QUEUE_F_DELAY_WARNED) && qm->env.sender[0])
        items = calloc(n + qm->n_rcpts, sizeof(*items));
    int64_t lifetime_ms = dl->conf->maximal_queue_lifetime * 1000;
    for (size_t i = 0; items && i < n; i++) {
        const struct delay_rcpt *r = &rcpts[i];
        if (r->rcpt >= qm->n_rcpts || !dsn_wanted(DSN_DELAYED, qm->rcpts[r->rcpt].notify))
            continue;
        struct dsn_item *it = &items[k++];
        it->rcpt = r->rcpt;
        it->code = r->o.code;
        /* RFC 3464 2.3.4: the status of the last attempt, a 4.X.X. */
        str_copy(it->dsn, r->o.status[0] ? r->o.status : "4.0.0", sizeof(it->dsn));
        it->text = dl_strdup(r->o.text);
        str_copy(it->mx, j->mx, sizeof(it->mx));
        str_copy(it->ip, j->ip, sizeof(it->ip));
        str_copy(it->remote_mta, r->o.code ? j->mx : "", sizeof(it->remote_mta));
        it->diag = r->o.reply[0] ? dl_strdup(r->o.reply) : NULL;
        it->last_attempt_ms = now;
        /* RFC 3464 2.3.9: retries end with the recipient's lifetime. */
        it->will_retry_until_ms = lifetime_ms > 0 ? qm->env.arrival_ms + lifetime_ms : 0;
    }
    /* The message's other recipients that wait after a deferral are
     * delayed too: the one warning names them all (as Postfix's does). */
    for (size_t i = 0; items && i < qm->n_rcpts; i++) {
        const struct queue_rcpt *qr = &qm->rcpts[i];
        bool in_job = false;
        for (size_t m = 0; m < n && !in_job; m++)
            in_job = rcpts[m].rcpt == qr->index;
        bool waiting = qr->state == QUEUE_RCPT_DEFERRED || qr->state == QUEUE_RCPT_ACTIVE;
        if (in_job || !waiting || !qr->has_result || !dsn_wanted(DSN_DELAYED, qr->notify))
            continue;
        struct dsn_item *it = &items[k++];
        it->rcpt = qr->index;
        it->code = qr->last.smtp_code;
        str_copy(it->dsn, qr->last.dsn && qr->last.dsn[0] ? qr->last.dsn : "4.0.0",
                 sizeof(it->dsn));
        it->text = dl_strdup(qr->last.text ? qr->last.text : "");
        str_copy(it->mx, qr->last.mx ? qr->last.mx : "", sizeof(it->mx));
        str_copy(it->ip, qr->last.ip ? qr->last.ip : "", sizeof(it->ip));
        str_copy(it->remote_mta, qr->last.smtp_code ? it->mx : "", sizeof(it->remote_mta));
        if (qr->last.smtp_code && qr->last.text) {
            /* The record keeps "host H[ip] said: REPLY": the reply is the
             * Diagnostic-Code (RFC 3464 2.3.6). */
            const char *said = strstr(qr->last.text, " said: ");
            it->diag = dl_strdup(said ? said + 7 : qr->last.text);
        }
        it->last_attempt_ms = qr->last.when_ms;
        it->will_retry_until_ms = lifetime_ms > 0 ? qm->env.arrival_ms + lifetime_ms : 0;
    }
    struct delay_warning *w = k ? calloc(1, sizeof(*w)) : NULL;
    if (!w) {
        dsn_items_free(items, n + qm->n_rcpts);
        queue_message_free(qm);
        return;
    }
    w->dl = dl;
    str_copy(w->id, j->id, sizeof(w->id));
    w->next = dl->warnings;
    dl->warnings = w;
    size_t blen = 0;
    char *body = dl_read_body(dl, j->id, qm->env.size, &blen);
    struct dsn_opts o = {.keep_on_error = true, .cb = on_delay_sent, .arg = w};
    int rc = dsn_send(dl, j->id, qm, (struct view){body ? body : "", body ? blen : 0}, DSN_DELAYED,
                      items, k, &o);
    if (rc != 0) {
        log_warn(QCOMP, "%s: cannot send the delay notification: %s", j->id, err_str(rc));
        warning_free(w);
    }
    free(body);
    queue_message_free(qm);
}
