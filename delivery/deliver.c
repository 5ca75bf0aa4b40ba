/*
 * deliver.c - the delivery engine: scheduler and orchestrator.
 *
 * Queue -> destinations -> jobs -> connections:
 *  - The scheduler leases due recipients from the queue (at once when the
 *    queue says new work was committed, else at the schedule's next due
 *    time) and files them by destination: the recipient's domain, or the one
 *    relayhost destination.
 *  - Recipients of one message to one destination form jobs of at most
 *    default_destination_recipient_limit recipients: one job is one SMTP
 *    transaction.
 *  - A destination runs at most default_destination_concurrency_limit
 *    connections, and all destinations together at most
 *    smtp_connection_limit. A connection that finished a job takes the next
 *    job of its destination (RSET between, up to
 *    smtp_connection_reuse_count_limit messages); with no job waiting it is
 *    kept idle for smtp_connection_cache_time_limit, then says QUIT.
 *  - A new connection walks the destination's addresses: MX hosts in
 *    preference order (RFC 5321 5.1; dns/ shuffles equal preferences), every
 *    address of each (IPv6 and IPv4), at most smtp_mx_address_limit per
 *    attempt. It moves to the next address on any failure before the session
 *    is ready (connection refused or timed out, a 4xx or 5xx greeting, EHLO
 *    refused, TLS failure). With smtp_tls_security_level=may a failed TLS
 *    handshake is retried once on the same address in plaintext.
 *
 * TLS policy (RFC 8461 4 and 5; docs/mta-sts.md): before its MX lookup a
 * destination asks policy/ for its MTA-STS policy (from the cache without
 * network I/O once fetched); per MX host policy_tls_requirement() says what
 * the session needs, a tls_policy_file entry first. enforce: hosts matching
 * no pattern are skipped, matching ones need SMTP_TLS_VERIFY for the MX
 * name and are never retried in plaintext; when no host is left the
 * recipients are deferred with 4.7.5 and the policy's reason, and an expired
 * recipient deferred so gets a policy_recheck() before its bounce. testing:
 * opportunistic, the RFC 8460 result type of what would have failed is
 * logged, counted and kept with the recipient's result. Overrides: none,
 * may, encrypt (SMTP_TLS_ENCRYPT), verify/secure (SMTP_TLS_ENCRYPT plus
 * conn_tls_check(): trusted chain and a match= name).
 *
 * Outcomes (the one place that maps results to queue actions, as Postfix's
 * smtp_trouble.c does): the SMTP client's per-recipient action is applied as
 * is: SENT -> queue_delivered, DEFER -> queue_defer (backoff by the queue),
 * BOUNCE -> a DSN (RFC 3464, never to the null sender, not when NOTIFY
 * excludes FAILURE) is submitted first and only after it is committed is the
 * recipient marked bounced; if the DSN cannot be queued the recipient is
 * deferred instead, so nothing is lost. Recipients whose lifetime ran out
 * (maximal_queue_lifetime) are bounced the same way with 4.4.7.
 *
 * Logs: one line per recipient and attempt,
 *   ID: to=<r>, relay=host[ip]:port, delay=D, delays=a/b/c/d, dsn=X.Y.Z,
 *   status=sent|deferred|bounced (reply or reason)[, POLICY, tls=VERDICT]
 * (POLICY: sts=enforce id=X, sts=testing id=X, sts=none, tls_policy=LEVEL;
 * VERDICT: verified, encrypted, none; a testing failure adds
 * sts_failure=TYPE), where a = arrival to lease, b = lease to connection start (queueing and
 * DNS), c = connection set-up (greeting, EHLO, TLS), d = transmission.
 * The SMTP client logs one line per TLS session.
 *
 * Invariants:
 *  - No recipient is reported delivered without the remote 250 for it.
 *  - Every leased recipient is reported exactly once (delivered, deferred,
 *    bounced, or given back with queue_unlease on shutdown before an attempt).
 *  - The engine is freed only when its handles are closed and every queue
 *    request it made has called back.
 *
 * Memory: message content is never held whole for sending: the SMTP client
 * reads it from the queue in pieces as the connection drains. Only a DSN
 * needs the original (headers, or all of it with RET=FULL), read then.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* The engine's clocks: the options' fake one, or the real ones. */
int64_t dl_now(const struct delivery *dl)
{
    return dl->opt.clock_ms ? dl->opt.clock_ms(dl->opt.clock_arg) : time_now_ms();
}

int64_t dl_mono(const struct delivery *dl)
{
    return dl->opt.clock_ms ? dl->opt.clock_ms(dl->opt.clock_arg) : time_mono_ms();
}

static void dest_run(struct dest *d);
static void conn_connect(struct conn *cn);
static void job_policy(struct job *j, const struct conn *cn);
static void conn_closed_policy(struct conn *cn, const struct smtp_outcome *res,
                               const struct tls_facts *f);
static void conn_report(struct conn *cn, const char *type, const char *text);
static void schedule_lease(struct delivery *dl, uint64_t delay_ms);
static void on_sweep(uv_timer_t *t);
static void arm_due(struct delivery *dl);
static bool pause_all(struct delivery *dl);
static bool pause_postpone(struct delivery *dl, const struct queue_due *due, int64_t now);

/* ---- small helpers ----------------------------------------------------------- */

static char *xstrdup(const char *s)
{
    size_t n = strlen(s ? s : "");
    char *p = malloc(n + 1);
    if (p)
        memcpy(p, s ? s : "", n + 1);
    return p;
}

static uint16_t dest_port(const struct delivery *dl)
{
    if (dl->relay && dl->relayhost.port)
        return dl->relayhost.port;
    return (uint16_t)dl->conf->smtp_destination_port;
}

/* ---- queue reports ------------------------------------------------------------ */

struct req {
    struct delivery *dl;
    char id[QUEUE_ID_LEN + 1];
    uint32_t rcpt;
    const char *what;
};

static void req_done(void *arg, int status)
{
    struct req *r = arg;
    struct delivery *dl = r->dl;
    if (status != 0)
        log_warn(QCOMP, "%s: cannot record %s of recipient %u: %s", r->id, r->what,
                 (unsigned)r->rcpt, err_str(status));
    /* A deferral or a give-back changed the schedule: wake up in time. */
    bool resched = status == 0 && r->what &&
                   (strcmp(r->what, "deferral") == 0 || strcmp(r->what, "unlease") == 0);
    free(r);
    dl->pending_reqs--;
    if (resched)
        arm_due(dl);
    deliver_maybe_free(dl);
}

static struct req *req_new(struct delivery *dl, const char *id, uint32_t rcpt, const char *what)
{
    struct req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->dl = dl;
    str_copy(r->id, id, sizeof(r->id));
    r->rcpt = rcpt;
    r->what = what;
    return r;
}

typedef int (*report_fn)(struct queue *, const char *, uint32_t, const struct queue_result *,
                         queue_done_cb, void *);

static void report(struct delivery *dl, report_fn fn, const char *what, const char *id,
                   uint32_t rcpt, const struct queue_result *res)
{
    if (!dl->q)
        return; /* closed: the queue gives leases back when next opened */
    struct req *r = req_new(dl, id, rcpt, what);
    if (!r) {
        log_err(QCOMP, "%s: out of memory recording %s", id, what);
        return;
    }
    int rc = fn(dl->q, id, rcpt, res, req_done, r);
    if (rc != 0) {
        log_warn(QCOMP, "%s: cannot record %s of recipient %u: %s", id, what, (unsigned)rcpt,
                 err_str(rc));
        free(r);
        return;
    }
    dl->pending_reqs++;
}

static void unlease(struct delivery *dl, const char *id, uint32_t rcpt)
{
    if (!dl->q)
        return;
    struct req *r = req_new(dl, id, rcpt, "unlease");
    if (!r)
        return;
    if (queue_unlease(dl->q, id, rcpt, req_done, r) != 0) {
        free(r);
        return;
    }
    dl->pending_reqs++;
}

/* ---- bounces (DSN first, then the bounce record) --------------------------------- */

struct bounce_item {
    uint32_t rcpt;
    int code;
    char dsn[12];
    char *text;
    char mx[256];
    char ip[64];
    char tls[160];
};

struct bounce_req {
    struct delivery *dl;
    char id[QUEUE_ID_LEN + 1];
    struct buf dsn;
    size_t n;
    struct bounce_item *items;
};

static void bounce_items_report(struct bounce_req *b, bool as_bounce, const char *why)
{
    for (size_t i = 0; i < b->n; i++) {
        struct bounce_item *it = &b->items[i];
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
        report(b->dl, as_bounce ? queue_bounce : queue_defer, as_bounce ? "bounce" : "defer", b->id,
               it->rcpt, &res);
    }
}

static void bounce_req_free(struct bounce_req *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->items[i].text);
    free(b->items);
    buf_free(&b->dsn);
    free(b);
}

static void on_dsn_queued(void *arg, int status, const char *dsn_id)
{
    struct bounce_req *b = arg;
    struct delivery *dl = b->dl;
    if (status == 0) {
        log_info(QCOMP, "%s: sender non-delivery notification: %s", b->id, dsn_id);
        bounce_items_report(b, true, NULL);
    } else {
        log_warn(QCOMP, "%s: cannot queue the non-delivery notification: %s", b->id,
                 err_str(status));
        bounce_items_report(b, false, err_str(status));
    }
    bounce_req_free(b);
    dl->pending_reqs--;
    deliver_maybe_free(dl);
}

/*
 * Bounce a set of recipients of one message: build the DSN from qm and body
 * (which the caller read), queue it, then mark the recipients bounced.
 * items are taken over.
 */
static void bounce_send(struct delivery *dl, const char *id, const struct queue_message *qm,
                        struct view body, struct bounce_item *items, struct dsn_rcpt *drs, size_t n)
{
    struct bounce_req *b = calloc(1, sizeof(*b));
    if (!b) {
        for (size_t i = 0; i < n; i++)
            free(items[i].text);
        free(items);
        return;
    }
    b->dl = dl;
    str_copy(b->id, id, sizeof(b->id));
    b->items = items;
    b->n = n;
    buf_init(&b->dsn, DSN_MAX);

    /* Which recipients get reported in the DSN. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned notify = 0;
        if (qm && items[i].rcpt < qm->n_rcpts)
            notify = qm->rcpts[items[i].rcpt].notify;
        if (deliver_wants_failure_dsn(notify))
            drs[k++] = drs[i];
    }
    if (!qm) {
        /* Without the message there is no DSN to write: keep the
         * recipients (deferred) rather than bounce them silently. */
        bounce_items_report(b, false, "cannot read the message from the queue");
        bounce_req_free(b);
        return;
    }
    const char *sender = qm->env.sender;
    if (!sender[0] || k == 0) {
        /* RFC 3464 / RFC 5321 6.1: never a DSN to the null sender. */
        bounce_items_report(b, true, NULL);
        bounce_req_free(b);
        return;
    }
    struct dsn_msg d = {
        .reporting_mta = dl->helo,
        .queue_id = id,
        .sender = sender,
        .envid = qm->env.envid,
        .arrival_ms = qm->env.arrival_ms,
        .now_ms = dl_now(dl),
        .ret_full = qm->env.ret == QUEUE_RET_FULL,
        .original = body,
        .rcpts = drs,
        .nrcpt = k,
    };
    int rc = dsn_build(&d, &b->dsn);
    if (rc == ERR_TOOBIG && d.ret_full) {
        /* Too big to return whole: return the headers. */
        buf_reset(&b->dsn);
        d.ret_full = false;
        rc = dsn_build(&d, &b->dsn);
    }
    if (rc == 0 && !dl->q)
        rc = ERR_CLOSED;
    if (rc == 0) {
        struct queue_envelope env = {.sender = "",
                                     .client_name = "localhost",
                                     .client_addr = "127.0.0.1",
                                     .helo = dl->helo,
                                     .auth_user = "",
                                     .tls = "",
                                     .envid = "",
                                     .ret = QUEUE_RET_NONE,
                                     .flags = 0};
        struct queue_rcpt_in to = {.addr = sender, .orcpt = NULL, .notify = 0};
        rc = queue_submit(dl->q, &env, &to, 1, b->dsn.data, b->dsn.len, on_dsn_queued, b);
        if (rc == 0) {
            dl->pending_reqs++;
            return;
        }
    }
    log_warn(QCOMP, "%s: cannot build or queue the non-delivery notification: %s", id, err_str(rc));
    bounce_items_report(b, false, err_str(rc));
    bounce_req_free(b);
}

/* Read a whole message body. NULL on error. */
static char *read_body(struct delivery *dl, const char *id, uint64_t size, size_t *len)
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

/* ---- log lines ------------------------------------------------------------------- */

static const char *status_word(enum smtp_action a)
{
    switch (a) {
    case SMTP_ACT_SENT:
        return "sent";
    case SMTP_ACT_BOUNCE:
        return "bounced";
    default:
        return "deferred";
    }
}

static void log_rcpt(const char *id, const char *addr, const char *relay, int64_t arrival,
                     int64_t lease, int64_t conn, int64_t ready, int64_t done,
                     const struct smtp_outcome *o, const char *extra)
{
    char delay[24], a[24], b[24], c[24], d[24];
    if (conn == 0)
        conn = done;
    if (ready == 0)
        ready = conn;
    deliver_format_delay(done - arrival, delay, sizeof(delay));
    deliver_format_delay(lease - arrival, a, sizeof(a));
    deliver_format_delay(conn - lease, b, sizeof(b));
    deliver_format_delay(ready - conn, c, sizeof(c));
    deliver_format_delay(done - ready, d, sizeof(d));
    log_info(
        COMPONENT, "%s: to=<%s>, relay=%s, delay=%s, delays=%s/%s/%s/%s, dsn=%s, status=%s (%s)%s",
        id, addr, relay && relay[0] ? relay : "none", delay, a, b, c, d,
        o->status[0] ? o->status : "4.0.0", status_word(o->action), o->text, extra ? extra : "");
}

/* ---- jobs -------------------------------------------------------------------------- */

static void job_free(struct job *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->n; i++)
        free(j->r[i].addr);
    free(j->r);
    free(j->sender);
    free(j->srcpt);
    free(j->notify);
    free(j->body);
    queue_message_free(j->qm);
    free(j);
}

static void tls_summary(const struct smtp_client *c, char *out, size_t size)
{
    const struct tls_facts *f = c ? smtp_client_tls(c) : NULL;
    if (!f || !f->handshake_done) {
        out[0] = '\0';
        return;
    }
    snprintf(out, size, "%s %s %s", f->version, f->cipher,
             f->verified ? "verified" : (f->chain_ok ? "trusted" : "untrusted"));
}

/*
 * Report every recipient of a finished job with its outcome, and free it.
 * Bounces are gathered into one DSN per job.
 */
static void job_finish(struct delivery *dl, struct job *j, const struct smtp_outcome *all)
{
    int64_t now = dl_now(dl);
    /* The policy that applied and the TLS verdict, after the Postfix-shaped
     * part of the log line; a testing failure is kept with the TLS facts of
     * the recipient's last result (RFC 8460 result type, for reports). */
    char extra[256] = "", tlsrec[256];
    if (!j->label[0] && j->dest)
        job_policy(j, NULL);
    if (j->label[0])
        snprintf(extra, sizeof(extra), ", %s, tls=%s%s%s", j->label,
                 j->verdict[0] ? j->verdict : "none", j->report[0] ? ", sts_failure=" : "",
                 j->report);
    snprintf(tlsrec, sizeof(tlsrec), "%s%s%s", j->tls, j->report[0] ? " sts_failure=" : "",
             j->report);
    struct bounce_item *items = calloc(j->n ? j->n : 1, sizeof(*items));
    struct dsn_rcpt *drs = calloc(j->n ? j->n : 1, sizeof(*drs));
    size_t nb = 0;
    for (size_t i = 0; i < j->n; i++) {
        const struct smtp_outcome *o = all ? all : &j->srcpt[i].out;
        struct smtp_outcome fallback;
        if (o->action == SMTP_ACT_NONE) {
            /* Defensive: a recipient the client did not decide is retried. */
            memset(&fallback, 0, sizeof(fallback));
            fallback.action = SMTP_ACT_DEFER;
            str_copy(fallback.status, "4.3.0", sizeof(fallback.status));
            str_copy(fallback.text, "delivery ended without a result", sizeof(fallback.text));
            o = &fallback;
        }
        log_rcpt(j->id, j->r[i].addr, j->relay, j->arrival_ms, j->lease_ms, j->conn_ms, j->ready_ms,
                 now, o, extra);
        struct queue_result res = {.smtp_code = o->code,
                                   .dsn = o->status,
                                   .text = o->text,
                                   .mx = j->mx,
                                   .ip = j->ip,
                                   .tls = tlsrec,
                                   .sts_mode = j->sts_mode,
                                   .sts_id = j->sts_id};
        dl->inflight--;
        if (o->action == SMTP_ACT_SENT) {
            report(dl, queue_delivered, "delivery", j->id, j->r[i].idx, &res);
        } else if (o->action == SMTP_ACT_BOUNCE && items && drs) {
            struct bounce_item *it = &items[nb];
            it->rcpt = j->r[i].idx;
            it->code = o->code;
            str_copy(it->dsn, o->status, sizeof(it->dsn));
            it->text = xstrdup(o->text);
            str_copy(it->mx, j->mx, sizeof(it->mx));
            str_copy(it->ip, j->ip, sizeof(it->ip));
            str_copy(it->tls, j->tls, sizeof(it->tls));
            struct dsn_rcpt *dr = &drs[nb];
            dr->addr = j->r[i].addr;
            dr->orcpt =
                j->qm && j->r[i].idx < j->qm->n_rcpts ? j->qm->rcpts[j->r[i].idx].orcpt : NULL;
            dr->action = "failed";
            dr->status = it->dsn;
            dr->remote_mta = o->code ? it->mx : NULL;
            dr->diag = o->reply[0] ? o->reply : NULL;
            dr->reason = it->text;
            dr->last_attempt_ms = now;
            nb++;
        } else {
            report(dl, queue_defer, "deferral", j->id, j->r[i].idx, &res);
        }
    }
    if (nb > 0) {
        /* The DSN needs the message: read it if the job never started. */
        if (!j->qm)
            queue_message_read(dl->q, j->id, &j->qm);
        if (!j->body && j->qm)
            j->body = read_body(dl, j->id, j->qm->env.size, &j->body_len);
        struct view body = {j->body ? j->body : "", j->body ? j->body_len : 0};
        bounce_send(dl, j->id, j->qm, body, items, drs, nb);
        items = NULL;
    }
    free(items);
    free(drs);
    job_free(j);
    if (dl->inflight < INFLIGHT_MAX && dl->want_lease)
        schedule_lease(dl, 0);
}

/* A whole job ends without a session outcome per recipient (DNS failure, every
 * address failed). */
static void job_fail(struct delivery *dl, struct job *j, enum smtp_action act, const char *status,
                     const char *text)
{
    struct smtp_outcome o;
    memset(&o, 0, sizeof(o));
    o.action = act;
    str_copy(o.status, status, sizeof(o.status));
    str_copy(o.text, text, sizeof(o.text));
    job_finish(dl, j, &o);
}

/* smtp_msg.read: the job's content straight from the queue. */
static int job_read(void *arg, uint64_t offset, void *dst, size_t cap, size_t *got)
{
    struct job *j = arg;
    struct delivery *dl = j->dest->dl;
    if (!dl->q)
        return ERR_CLOSED;
    return queue_body_read(dl->q, j->id, offset, dst, cap, got);
}

/* Prepare the smtp_msg of a job: its envelope and DSN parameters. */
static int job_load(struct delivery *dl, struct job *j)
{
    if (j->msg.rcpt)
        return 0;
    int rc = queue_message_read(dl->q, j->id, &j->qm);
    if (rc != 0)
        return rc;
    j->srcpt = calloc(j->n, sizeof(*j->srcpt));
    j->notify = calloc(j->n, sizeof(*j->notify));
    if (!j->srcpt || !j->notify)
        return ERR_NOMEM;
    for (size_t i = 0; i < j->n; i++) {
        j->srcpt[i].addr = j->r[i].addr;
        if (j->r[i].idx < j->qm->n_rcpts) {
            const struct queue_rcpt *qr = &j->qm->rcpts[j->r[i].idx];
            if (qr->orcpt && qr->orcpt[0])
                j->srcpt[i].orcpt = qr->orcpt;
            unsigned nf = qr->notify;
            if (nf) {
                char *s = j->notify[i];
                s[0] = '\0';
                if (nf & QUEUE_NOTIFY_NEVER) {
                    str_copy(s, "NEVER", sizeof(j->notify[i]));
                } else {
                    const char *sep = "";
                    static const struct {
                        unsigned bit;
                        const char *name;
                    } names[] = {{QUEUE_NOTIFY_SUCCESS, "SUCCESS"},
                                 {QUEUE_NOTIFY_FAILURE, "FAILURE"},
                                 {QUEUE_NOTIFY_DELAY, "DELAY"}};
                    for (size_t k = 0; k < 3; k++)
                        if (nf & names[k].bit) {
                            size_t l = strlen(s);
                            snprintf(s + l, sizeof(j->notify[i]) - l, "%s%s", sep, names[k].name);
                            sep = ",";
                        }
                }
                j->srcpt[i].notify = s[0] ? s : NULL;
            }
        }
    }
    j->msg.sender = j->qm->env.sender;
    /* The content is read from the queue piece by piece as it is sent. */
    j->msg.read = job_read;
    j->msg.read_arg = j;
    j->msg.size = j->qm->env.size;
    j->msg.smtputf8 = (j->qm->env.flags & QUEUE_F_SMTPUTF8) != 0;
    j->msg.eightbit = (j->qm->env.flags & QUEUE_F_8BITMIME) != 0;
    j->msg.ret = j->qm->env.ret == QUEUE_RET_FULL   ? "FULL"
                 : j->qm->env.ret == QUEUE_RET_HDRS ? "HDRS"
                                                    : NULL;
    j->msg.envid = j->qm->env.envid && j->qm->env.envid[0] ? j->qm->env.envid : NULL;
    j->msg.nrcpt = j->n;
    j->msg.rcpt = j->srcpt;
    return 0;
}

/* ---- connections ----------------------------------------------------------------------- */

static void conn_event(struct smtp_client *c, enum smtp_event ev, void *arg);

static void conn_release(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    d->nconns--;
    dl->nconns--;
    if (cn->all_prev)
        cn->all_prev->all_next = cn->all_next;
    else
        dl->conns = cn->all_next;
    if (cn->all_next)
        cn->all_next->all_prev = cn->all_prev;
    free(cn);
}

static void idle_remove(struct conn *cn)
{
    struct conn **pp = &cn->dest->idle;
    while (*pp && *pp != cn)
        pp = &(*pp)->next;
    if (*pp)
        *pp = cn->next;
    cn->next = NULL;
    cn->idle = false;
}

/* Give a job to a ready connection. false if it could not start (the job
 * is then finished with an error and the connection quits). */
static bool conn_send(struct conn *cn, struct job *j)
{
    struct delivery *dl = cn->dest->dl;
    cn->job = j;
    if (j->conn_ms == 0)
        j->conn_ms = dl_now(dl);
    if (j->ready_ms == 0)
        j->ready_ms = dl_now(dl);
    str_copy(j->relay, smtp_client_relay(cn->c), sizeof(j->relay));
    str_copy(j->ip, smtp_client_ip(cn->c), sizeof(j->ip));
    tls_summary(cn->c, j->tls, sizeof(j->tls));
    job_policy(j, cn);
    int rc = job_load(dl, j);
    if (rc != 0) {
        cn->job = NULL;
        char text[200];
        snprintf(text, sizeof(text), "cannot read the message from the queue: %s", err_str(rc));
        job_fail(dl, j, SMTP_ACT_DEFER, "4.3.0", text);
        smtp_client_quit(cn->c);
        return false;
    }
    cn->msgs_before = smtp_client_messages(cn->c);
    rc = smtp_client_send(cn->c, &j->msg);
    if (rc != 0) {
        cn->job = NULL;
        job_fail(dl, j, SMTP_ACT_DEFER, "4.3.0", "internal error: session not ready");
        smtp_client_quit(cn->c);
        return false;
    }
    return true;
}

static struct job *dest_pop(struct dest *d)
{
    struct job *j = d->head;
    if (j) {
        d->head = j->next;
        if (!d->head)
            d->tail = NULL;
        j->next = NULL;
        d->njobs--;
    }
    return j;
}

static void dest_push_front(struct dest *d, struct job *j)
{
    j->next = d->head;
    d->head = j;
    if (!d->tail)
        d->tail = j;
    d->njobs++;
}

/* The session of cn is idle: the next job, the idle cache, or QUIT. */
static void conn_next(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    if (!smtp_client_usable(cn->c) || dl->stopping ||
        smtp_client_messages(cn->c) >= (unsigned)dl->conf->smtp_connection_reuse_count_limit) {
        smtp_client_quit(cn->c);
        return;
    }
    struct job *j = dest_pop(d);
    if (j) {
        j->conn_ms = dl_now(dl);
        j->ready_ms = j->conn_ms;
        str_copy(j->mx, cn->last_relay, sizeof(j->mx));
        conn_send(cn, j);
        return;
    }
    cn->idle = true;
    cn->idle_since = dl_now(dl);
    cn->next = d->idle;
    d->idle = cn;
    if (!uv_is_active((uv_handle_t *)&dl->sweep_timer))
        uv_timer_start(&dl->sweep_timer, on_sweep, 500, 500);
}

static const struct target *conn_target(const struct conn *cn)
{
    return &cn->dest->targets[cn->target];
}

static void conn_event(struct smtp_client *c, enum smtp_event ev, void *arg)
{
    struct conn *cn = arg;
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    switch (ev) {
    case SMTP_EV_READY: {
        const struct tls_facts *rf = smtp_client_tls(c);
        if (cn->req.report_only && !cn->req.mx_matches)
            conn_report(cn, "validation-failure", "MX host matches no pattern of the policy");
        if (cn->req.report_only && (!rf || !rf->handshake_done))
            conn_report(cn, "starttls-not-supported", "no TLS session");
        if (cn->job) {
            cn->job->ready_ms = dl_now(dl);
            struct job *j = cn->job;
            str_copy(j->mx, conn_target(cn)->host, sizeof(j->mx));
            str_copy(cn->last_relay, conn_target(cn)->host, sizeof(cn->last_relay));
            conn_send(cn, j);
        } else {
            conn_next(cn);
        }
        break;
    }
    case SMTP_EV_DONE: {
        struct job *j = cn->job;
        cn->job = NULL;
        if (!j)
            break;
        const struct smtp_outcome *first = j->n ? &j->srcpt[0].out : NULL;
        if (!j->msg.attempted && dl->closing) {
            for (size_t i = 0; i < j->n; i++) {
                unlease(dl, j->id, j->r[i].idx);
                dl->inflight--;
            }
            job_free(j);
        } else if (!j->msg.attempted && cn->msgs_before > 0 && first && first->err != 0) {
            /* A reused session failed before MAIL (RSET refused, connection
             * gone): not an attempt. The job goes back for another session. */
            for (size_t i = 0; i < j->n; i++)
                memset(&j->srcpt[i].out, 0, sizeof(j->srcpt[i].out));
            j->conn_ms = j->ready_ms = 0;
            dest_push_front(d, j);
        } else {
            job_finish(dl, j, NULL);
        }
        if (smtp_client_usable(c))
            conn_next(cn);
        break;
    }
    case SMTP_EV_CLOSED: {
        const struct smtp_outcome *res = smtp_client_result(c);
        if (cn->idle)
            idle_remove(cn);
        if (cn->job) {
            /* Failed before the session was ready: this address is done. */
            cn->last = *res;
            /* Postfix's relay=none: no connection was made (4.4.1). */
            str_copy(cn->job->relay,
                     strcmp(res->status, "4.4.1") == 0 ? "none" : smtp_client_relay(c),
                     sizeof(cn->job->relay));
            str_copy(cn->job->mx, conn_target(cn)->host, sizeof(cn->job->mx));
            str_copy(cn->job->ip, smtp_client_ip(c), sizeof(cn->job->ip));
            conn_closed_policy(cn, res, smtp_client_tls(c));
            job_policy(cn->job, cn);
            bool tls_failed = res->err == ERR_TLS && smtp_client_tls(c) != NULL;
            smtp_client_free(c);
            cn->c = NULL;
            if (cn->mode == SMTP_TLS_MAY && tls_failed && !cn->plain_retry && !dl->closing) {
                /* Opportunistic TLS: retry the same address without it. */
                cn->plain_retry = true;
                cn->mode = SMTP_TLS_NONE;
            } else {
                cn->target++;
                cn->plain_retry = false;
            }
            conn_connect(cn);
            break;
        }
        smtp_client_free(c);
        cn->c = NULL;
        conn_release(cn);
        if (!dl->closing)
            dest_run(d);
        deliver_maybe_free(dl);
        break;
    }
    }
}

static enum smtp_tls_mode tls_level(const struct delivery *dl)
{
    const char *l = dl->conf->smtp_tls_security_level;
    if (l && strcmp(l, "none") == 0)
        return SMTP_TLS_NONE;
    if (l && strcmp(l, "verify") == 0)
        return SMTP_TLS_VERIFY;
    return SMTP_TLS_MAY;
}

/* ---- MTA-STS and tls_policy_file, per MX host (RFC 8461 4 and 5) --------------------- */

/* Does MTA-STS apply to this destination at all? Not to relayhost (the
 * relay is the operator's choice, not the recipient domain's MX) and not to
 * address literals. */
static bool dest_sts_applies(const struct dest *d)
{
    return !d->dl->relay && d->name[0] != '[';
}

/* The policy of the connection's current target: an override entry wins,
 * then the domain's MTA-STS policy (policy_tls_requirement()). */
static void conn_policy(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    const struct policy_override *ov =
        dest_sts_applies(d) ? policy_override_find(dl->ov, d->name) : NULL;
    cn->have_ov = ov != NULL;
    if (ov)
        cn->ov = *ov;
    cn->req = policy_tls_requirement(d->sts_have ? &d->sts : NULL, cn->have_ov ? &cn->ov : NULL,
                                     conn_target(cn)->host);
    cn->report[0] = cn->report_text[0] = '\0';
}

/* The SMTP client's TLS mode for the connection's policy. */
static enum smtp_tls_mode conn_tls_mode(const struct conn *cn)
{
    const struct policy_tls_req *q = &cn->req;
    if (q->origin == POLICY_ORIGIN_OVERRIDE) {
        switch (q->level) {
        case POLICY_TLS_NONE:
            return SMTP_TLS_NONE;
        case POLICY_TLS_MAY:
            return SMTP_TLS_MAY;
        default:
            /* encrypt; verify and secure are judged by conn_tls_check()
             * against the entry's match= names. */
            return SMTP_TLS_ENCRYPT;
        }
    }
    if (q->level == POLICY_TLS_VERIFY)
        return SMTP_TLS_VERIFY; /* enforce: a matching MX host, RFC 8461 4.2 */
    return tls_level(cn->dest->dl);
}

/* "sts=enforce id=X", "sts=testing id=X", "sts=none", "tls_policy=secure". */
static void dest_label(const struct dest *d, const struct conn *cn, char *out, size_t size)
{
    if (cn && cn->req.origin == POLICY_ORIGIN_OVERRIDE)
        snprintf(out, size, "tls_policy=%s",
                 cn->ov.secure ? "secure" : policy_tls_level_name(cn->ov.level));
    else if (!cn && dest_sts_applies(d) && policy_override_find(d->dl->ov, d->name)) {
        const struct policy_override *ov = policy_override_find(d->dl->ov, d->name);
        snprintf(out, size, "tls_policy=%s",
                 ov->secure ? "secure" : policy_tls_level_name(ov->level));
    } else if (d->sts_have)
        snprintf(out, size, "sts=%s id=%s", policy_mode_name(d->sts.mode), d->sts_id);
    else if (dest_sts_applies(d))
        snprintf(out, size, "sts=none");
    else
        out[0] = '\0';
}

/* Record on the job which policy applied to its attempt (log line, queue
 * result: sts_mode and sts_id), from the connection when there was one. */
static void job_policy(struct job *j, const struct conn *cn)
{
    const struct dest *d = j->dest;
    dest_label(d, cn, j->label, sizeof(j->label));
    bool override = cn ? cn->req.origin == POLICY_ORIGIN_OVERRIDE
                       : dest_sts_applies(d) && policy_override_find(d->dl->ov, d->name);
    if (!dest_sts_applies(d)) {
        j->sts_mode[0] = j->sts_id[0] = '\0';
    } else if (d->sts_have && !override) {
        str_copy(j->sts_mode, policy_mode_name(d->sts.mode), sizeof(j->sts_mode));
        str_copy(j->sts_id, d->sts_id, sizeof(j->sts_id));
    } else {
        str_copy(j->sts_mode, "none", sizeof(j->sts_mode));
        j->sts_id[0] = '\0';
    }
    const struct tls_facts *f = cn && cn->c ? smtp_client_tls(cn->c) : NULL;
    str_copy(j->verdict, f && f->handshake_done ? (f->verified ? "verified" : "encrypted") : "none",
             sizeof(j->verdict));
    str_copy(j->report, cn ? cn->report : "", sizeof(j->report));
}

/* testing (RFC 8461 5): the failure a report would carry; delivery goes on.
 * The first failure of a connection is kept, logged and counted. */
static void conn_report(struct conn *cn, const char *type, const char *text)
{
    struct dest *d = cn->dest;
    if (cn->report[0])
        return;
    str_copy(cn->report, type, sizeof(cn->report));
    str_copy(cn->report_text, text, sizeof(cn->report_text));
    d->dl->sts_testing_failures++;
    log_info(COMPONENT, "sts: testing policy failure domain=%s id=%s mx=%s result=%s (%s)", d->name,
             d->sts_id, conn_target(cn)->host, type, text);
}

/* A policy (enforce, or an override's encrypt/verify/secure) made this host
 * fail: keep the reason; the attempt ends with it if no host succeeds. */
static void conn_policy_fail(struct conn *cn, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_policy_fail(struct conn *cn, const char *status, const char *fmt, ...)
{
    struct smtp_outcome *o = &cn->sts_fail;
    memset(o, 0, sizeof(*o));
    o->action = SMTP_ACT_DEFER;
    o->err = ERR_TLS;
    str_copy(o->status, status, sizeof(o->status));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->text, sizeof(o->text), fmt, ap);
    va_end(ap);
    cn->have_sts_fail = true;
}

/* smtp_client tls_check: judge the handshake's facts by the policy. */
static bool conn_tls_check(struct smtp_client *c, const struct tls_facts *f,
                           struct smtp_outcome *out, void *arg)
{
    (void)c;
    struct conn *cn = arg;
    struct dest *d = cn->dest;
    const char *host = conn_target(cn)->host;
    if (cn->req.origin == POLICY_ORIGIN_OVERRIDE && cn->req.level == POLICY_TLS_VERIFY) {
        /* verify/secure: a trusted chain in date, and a name the entry's
         * match= list allows (Postfix smtp_tls_policy_maps semantics). */
        const char *why = NULL;
        if (!f->chain_ok)
            why = tls_failure_str(f->failure != TLS_FAIL_NONE ? f->failure
                                                              : TLS_FAIL_CERT_NOT_TRUSTED);
        else if (!policy_override_cert_ok(&cn->ov, d->name, host, f))
            why = "no certificate name matches the policy";
        if (why) {
            out->action = SMTP_ACT_DEFER;
            str_copy(out->status, "4.7.5", sizeof(out->status));
            snprintf(out->text, sizeof(out->text), "TLS policy %s: certificate for %s: %s",
                     cn->ov.secure ? "secure" : "verify", host, why);
            return false;
        }
        return true;
    }
    if (cn->req.report_only && !f->verified) {
        const char *type = tls_failure_result_type(f->failure);
        conn_report(cn, type ? type : "validation-failure",
                    f->text[0] ? f->text : tls_failure_str(f->failure));
    }
    return true;
}

/* The session ended before it was ready: was the policy the reason? */
static void conn_closed_policy(struct conn *cn, const struct smtp_outcome *res,
                               const struct tls_facts *f)
{
    const char *host = conn_target(cn)->host;
    if (res->err != ERR_TLS)
        return; /* connection trouble: not a policy matter */
    if (cn->req.origin == POLICY_ORIGIN_STS && cn->req.level == POLICY_TLS_VERIFY) {
        /* RFC 8461 4.2 failed on this host: never the plaintext retry. */
        if (strcmp(res->status, "4.7.4") == 0)
            conn_policy_fail(cn, "4.7.5", "MTA-STS enforce: %s does not offer STARTTLS: %s", host,
                             res->text);
        else if (f && f->failure != TLS_FAIL_NONE && f->failure != TLS_FAIL_HANDSHAKE)
            conn_policy_fail(cn, "4.7.5", "MTA-STS enforce: certificate for %s: %s", host,
                             tls_failure_str(f->failure));
        else
            conn_policy_fail(cn, "4.7.5", "MTA-STS enforce: TLS with %s failed: %s", host,
                             res->text);
        return;
    }
    if (cn->req.origin == POLICY_ORIGIN_OVERRIDE && cn->req.level >= POLICY_TLS_ENCRYPT) {
        conn_policy_fail(cn, res->status[0] ? res->status : "4.7.5", "%s", res->text);
        return;
    }
    if (cn->req.report_only) {
        const char *type = f ? tls_failure_result_type(f->failure) : NULL;
        conn_report(cn, type ? type : "validation-failure", res->text);
    }
}

/* Start a session on the connection's current target, or end the job when
 * the addresses are used up. */
static void conn_connect(struct conn *cn)
{
    struct dest *d = cn->dest;
    struct delivery *dl = d->dl;
    struct job *j = cn->job;
    size_t limit = (size_t)dl->conf->smtp_mx_address_limit;
    while (!cn->plain_retry && !dl->closing && cn->target < d->ntargets) {
        conn_policy(cn);
        if (cn->req.deliver)
            break;
        /* RFC 8461 4.1 and 5 (enforce): an MX host that matches no pattern
         * of the policy is never used. */
        log_info(COMPONENT, "%s: MTA-STS enforce id=%s: MX host %s matches no pattern: skipped",
                 d->name, d->sts_id, conn_target(cn)->host);
        if (!cn->have_sts_fail)
            conn_policy_fail(cn, "4.7.5",
                             "MTA-STS enforce: MX host %s matches no pattern of the policy",
                             conn_target(cn)->host);
        cn->target++;
    }
    if (dl->closing || cn->target >= d->ntargets || (cn->tried >= limit && !cn->plain_retry)) {
        cn->job = NULL;
        if (dl->closing) {
            for (size_t i = 0; i < j->n; i++) {
                unlease(dl, j->id, j->r[i].idx);
                dl->inflight--;
            }
            job_free(j);
        } else if (cn->have_sts_fail) {
            /* RFC 8461 5: the policy left no usable host: defer (never
             * bounce for it, never deliver in plaintext or unverified). */
            struct smtp_outcome o = cn->sts_fail;
            o.action = SMTP_ACT_DEFER;
            if (o.status[0] != '4')
                o.status[0] = '4';
            if (cn->req.origin == POLICY_ORIGIN_STS)
                dl->sts_enforce_failures++;
            job_finish(dl, j, &o);
        } else if (cn->last.action == SMTP_ACT_NONE) {
            job_fail(dl, j, SMTP_ACT_DEFER, "4.4.3", "no address to deliver to");
        } else {
            struct smtp_outcome o = cn->last;
            /* Every address failed: retry later, whatever the last one said
             * (Postfix's smtp_skip_5xx_greeting: a 5xx greeting does not
             * bounce mail). */
            o.action = SMTP_ACT_DEFER;
            if (o.status[0] != '4') {
                o.status[0] = '4';
            }
            job_finish(dl, j, &o);
        }
        conn_release(cn);
        if (!dl->closing)
            dest_run(d);
        deliver_maybe_free(dl);
        return;
    }
    const struct target *t = conn_target(cn);
    if (!cn->plain_retry)
        cn->mode = conn_tls_mode(cn);
    const struct conf *cf = dl->conf;
    struct smtp_client_opts o = {
        .helo_name = dl->helo,
        .host = t->host,
        .addr = (const struct sockaddr *)&t->addr,
        .tls = cn->mode,
        .verify_host = t->host,
        .tls_ctx = dl->tls_ctx,
        .tls_check = conn_tls_check,
        .timeouts =
            {
                .connect = (uint32_t)(cf->smtp_connect_timeout * 1000),
                .greeting = (uint32_t)(cf->smtp_helo_timeout * 1000),
                .helo = (uint32_t)(cf->smtp_helo_timeout * 1000),
                .starttls = (uint32_t)(cf->smtp_starttls_timeout * 1000),
                .mail = (uint32_t)(cf->smtp_mail_timeout * 1000),
                .rcpt = (uint32_t)(cf->smtp_rcpt_timeout * 1000),
                .data_init = (uint32_t)(cf->smtp_data_init_timeout * 1000),
                .data_block = (uint32_t)(cf->smtp_data_xfer_timeout * 1000),
                .data_done = (uint32_t)(cf->smtp_data_done_timeout * 1000),
                .rset = (uint32_t)(cf->smtp_rset_timeout * 1000),
                .quit = (uint32_t)(cf->smtp_quit_timeout * 1000),
            },
        .cb = conn_event,
        .arg = cn,
    };
    if (!cn->plain_retry)
        cn->tried++;
    int err = 0;
    cn->c = smtp_client_new(dl->loop, &o, &err);
    if (!cn->c) {
        memset(&cn->last, 0, sizeof(cn->last));
        cn->last.action = SMTP_ACT_DEFER;
        str_copy(cn->last.status, "4.3.0", sizeof(cn->last.status));
        snprintf(cn->last.text, sizeof(cn->last.text), "cannot start a session: %s", err_str(err));
        cn->target = d->ntargets; /* give up on this attempt */
        conn_connect(cn);
    }
}

static void conn_new(struct dest *d, struct job *j)
{
    struct delivery *dl = d->dl;
    struct conn *cn = calloc(1, sizeof(*cn));
    if (!cn) {
        job_fail(dl, j, SMTP_ACT_DEFER, "4.3.0", "out of memory");
        return;
    }
    cn->dest = d;
    cn->job = j;
    j->conn_ms = dl_now(dl);
    d->nconns++;
    dl->nconns++;
    cn->all_next = dl->conns;
    if (dl->conns)
        dl->conns->all_prev = cn;
    dl->conns = cn;
    conn_connect(cn);
}

/* ---- destinations ------------------------------------------------------------------- */

static void dest_fail_all(struct dest *d, enum smtp_action act, const char *status,
                          const char *text)
{
    struct job *j;
    while ((j = dest_pop(d)))
        job_fail(d->dl, j, act, status, text);
}

static bool add_target(struct dest *d, const char *host, int family, const uint8_t *bytes,
                       uint16_t port)
{
    if (d->ntargets >= MAX_TARGETS)
        return false;
    struct target *t = &d->targets[d->ntargets];
    memset(t, 0, sizeof(*t));
    str_copy(t->host, host, sizeof(t->host));
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&t->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        memcpy(&a->sin_addr, bytes, 4);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&t->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        memcpy(&a->sin6_addr, bytes, 16);
    }
    d->ntargets++;
    return true;
}

/* The resolver's answer becomes the destination's targets, or its jobs fail.
 * RFC 5321 5.1 for MX; RFC 7505 for a null MX. */
static void resolved(struct dest *d, enum dns_status st, const char *why, const char *qtype)
{
    d->query = NULL;
    if (d->ntargets > 0) {
        d->state = D_READY;
        d->resolved_ms = dl_mono(d->dl);
        dest_run(d);
        return;
    }
    d->state = D_NEW;
    char text[600];
    switch (st) {
    case DNS_NULL_MX:
        snprintf(text, sizeof(text), "Domain %s does not accept mail (nullMX)", d->name);
        dest_fail_all(d, SMTP_ACT_BOUNCE, "5.1.10", text);
        break;
    case DNS_NXDOMAIN:
    case DNS_NODATA:
    case DNS_INVALID:
        snprintf(text, sizeof(text),
                 "Host or domain name not found. Name service error for name=%s type=%s: %s",
                 d->name, qtype, why ? why : dns_status_name(st));
        dest_fail_all(d, SMTP_ACT_BOUNCE, st == DNS_INVALID ? "5.1.2" : "5.4.4", text);
        break;
    default:
        snprintf(text, sizeof(text),
                 "Host or domain name not found. Name service error for name=%s type=%s: %s, "
                 "try again",
                 d->name, qtype, why ? why : dns_status_name(st));
        dest_fail_all(d, SMTP_ACT_DEFER, "4.4.3", text);
        break;
    }
}

static void on_mx(void *arg, const struct dns_mx_result *r)
{
    struct dest *d = arg;
    d->ntargets = 0;
    uint16_t port = dest_port(d->dl);
    if (r->status == DNS_OK || r->status == DNS_IMPLICIT_MX) {
        /* Hosts come in delivery order; every address of each. */
        for (size_t h = 0; h < r->n_hosts; h++) {
            const struct dns_mx_host *mh = &r->hosts[h];
            if (mh->status != DNS_OK)
                continue;
            for (size_t a = 0; a < mh->n_addr; a++)
                add_target(d, mh->name, mh->addr[a].family, mh->addr[a].bytes, port);
        }
    }
    resolved(d, r->status, r->why, "MX");
}

static void on_addrs(void *arg, const struct dns_result *r)
{
    struct dest *d = arg;
    d->ntargets = 0;
    uint16_t port = dest_port(d->dl);
    if (r->status == DNS_OK)
        for (size_t a = 0; a < r->n_addr; a++)
            add_target(d, d->dl->relayhost.host, r->addr[a].family, r->addr[a].bytes, port);
    resolved(d, r->status, r->why, "A");
}

static void on_policy(void *arg, const struct policy_result *r);

/* Look the domain's MTA-STS policy up before its MX records (DESIGN, the
 * path of one message, step 4). A cached policy answers without network
 * I/O (policy_get()). true when the answer will come to on_policy(). */
static bool dest_policy_lookup(struct dest *d)
{
    struct delivery *dl = d->dl;
    if (!dl->pol || !dest_sts_applies(d))
        return false;
    int rc = policy_get(dl->pol, d->name, on_policy, d, &d->preq);
    if (rc != 0) {
        /* A name policy/ cannot normalise has no policy. */
        d->preq = NULL;
        policy_sts_clear(&d->sts);
        d->sts_have = false;
        d->sts_id[0] = '\0';
        return false;
    }
    return true;
}

/* Idle sessions of a destination were set up under the policy (or the
 * configuration) of their time: when that changes they are not reused. */
static void dest_quit_idle(struct dest *d)
{
    struct conn *cn;
    while ((cn = d->idle)) {
        idle_remove(cn);
        smtp_client_quit(cn->c);
    }
}

static void on_policy(void *arg, const struct policy_result *r)
{
    struct dest *d = arg;
    struct delivery *dl = d->dl;
    d->preq = NULL;
    bool had = d->sts_have;
    char old_id[POLICY_ID_MAX + 1];
    str_copy(old_id, d->sts_id, sizeof(old_id));
    if (had != (r->have_policy && r->policy) || (had && strcmp(old_id, r->id ? r->id : "") != 0))
        dest_quit_idle(d);
    policy_sts_clear(&d->sts);
    d->sts_have = false;
    d->sts_id[0] = '\0';
    if (r->have_policy && r->policy) {
        if (policy_sts_copy(&d->sts, r->policy) != 0) {
            /* Never fall back to no policy for want of memory. */
            d->state = D_NEW;
            dest_fail_all(d, SMTP_ACT_DEFER, "4.3.0", "out of memory (MTA-STS policy)");
            return;
        }
        d->sts_have = true;
        str_copy(d->sts_id, r->id ? r->id : "", sizeof(d->sts_id));
    }
    int rc = dns_mx_resolve(dl->dns, d->name, on_mx, d, &d->query);
    if (rc != 0) {
        d->query = NULL;
        resolved(d, DNS_TEMPFAIL, err_str(rc), "MX");
    }
}

/* An address literal ("1.2.3.4", "::1", "IPv6:...")? Fill a target. */
static bool literal_target(struct dest *d, const char *s, uint16_t port)
{
    uint8_t b[16];
    if (strncasecmp(s, "IPv6:", 5) == 0)
        s += 5;
    if (inet_pton(AF_INET, s, b) == 1)
        return add_target(d, s, AF_INET, b, port);
    if (inet_pton(AF_INET6, s, b) == 1)
        return add_target(d, s, AF_INET6, b, port);
    return false;
}

static void dest_resolve(struct dest *d)
{
    struct delivery *dl = d->dl;
    d->state = D_RESOLVING;
    d->ntargets = 0;
    uint16_t port = dest_port(dl);
    int rc;
    if (dl->relay) {
        /* relayhost: [host] means no MX lookup (Postfix syntax). */
        if (literal_target(d, dl->relayhost.host, port)) {
            resolved(d, DNS_OK, NULL, "A");
            return;
        }
        if (dl->relayhost.bracketed)
            rc = dns_addrs(dl->dns, dl->relayhost.host, on_addrs, d, &d->query);
        else
            rc = dns_mx_resolve(dl->dns, dl->relayhost.host, on_mx, d, &d->query);
    } else if (d->name[0] == '[') {
        /* A domain literal (RFC 5321 4.1.3): the address itself. */
        char lit[256];
        str_copy(lit, d->name + 1, sizeof(lit));
        char *end = strchr(lit, ']');
        if (end)
            *end = '\0';
        resolved(d, literal_target(d, lit, port) ? DNS_OK : DNS_INVALID, "bad address literal",
                 "A");
        return;
    } else {
        if (dest_policy_lookup(d))
            return; /* on_policy() goes on with the MX lookup */
        rc = dns_mx_resolve(dl->dns, d->name, on_mx, d, &d->query);
    }
    if (rc != 0) {
        d->query = NULL;
        resolved(d, DNS_TEMPFAIL, err_str(rc), "MX");
    }
}

/* Run what can run: resolve, reuse idle sessions, open new ones. */
static void dest_run(struct dest *d)
{
    struct delivery *dl = d->dl;
    if (dl->closing || !d->head)
        return;
    if (d->state == D_RESOLVING)
        return;
    /* Addresses (and the MTA-STS policy found with them) are reused for a
     * while; never longer than sts_txt_check_interval, so a changed policy
     * id is looked at as often as the policy engine would. */
    int64_t ttl = RESOLVE_TTL_MS;
    if (dl->pol && dl->conf->sts_txt_check_interval * 1000 < ttl)
        ttl = dl->conf->sts_txt_check_interval * 1000;
    if (d->state == D_READY && dl_mono(dl) - d->resolved_ms > ttl && d->nconns == 0)
        d->state = D_NEW;
    if (d->state == D_NEW) {
        dest_resolve(d);
        return;
    }
    while (d->head && d->idle) {
        struct conn *cn = d->idle;
        idle_remove(cn);
        if (!smtp_client_usable(cn->c)) {
            smtp_client_quit(cn->c);
            continue;
        }
        struct job *j = dest_pop(d);
        j->conn_ms = j->ready_ms = dl_now(dl);
        str_copy(j->mx, cn->last_relay, sizeof(j->mx));
        conn_send(cn, j);
    }
    while (d->head && d->nconns < (size_t)dl->conf->default_destination_concurrency_limit &&
           dl->nconns < (size_t)dl->conf->smtp_connection_limit) {
        conn_new(d, dest_pop(d));
    }
}

static struct dest *dest_get(struct delivery *dl, const char *name)
{
    for (struct dest *d = dl->dests; d; d = d->next)
        if (strcmp(d->name, name) == 0)
            return d;
    struct dest *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->targets = calloc(MAX_TARGETS, sizeof(*d->targets));
    if (!d->targets) {
        free(d);
        return NULL;
    }
    d->dl = dl;
    str_copy(d->name, name, sizeof(d->name));
    d->next = dl->dests;
    dl->dests = d;
    return d;
}

/* ---- the scheduler -------------------------------------------------------------------- */

static void file_due(struct delivery *dl, const struct queue_due *due, int64_t now);
static void expire_bounce(struct delivery *dl, const struct queue_due *due);

/* An expired recipient whose last attempt an enforce policy deferred waits
 * for policy_recheck() (RFC 8461 5) before it becomes a bounce. */
struct recheck {
    struct recheck *next;
    struct delivery *dl;
    struct policy_req *req;
    struct queue_due due; /* addr and sender point into the strings below */
    char *addr;
    char *sender;
    char old_id[POLICY_ID_MAX + 1];
};

static void recheck_free(struct recheck *rk)
{
    struct recheck **pp = &rk->dl->rechecks;
    while (*pp && *pp != rk)
        pp = &(*pp)->next;
    if (*pp)
        *pp = rk->next;
    free(rk->addr);
    free(rk->sender);
    free(rk);
}

static void on_recheck(void *arg, const struct policy_result *r)
{
    struct recheck *rk = arg;
    struct delivery *dl = rk->dl;
    rk->req = NULL;
    dl->pending_reqs--;
    bool same = r->have_policy && r->policy && r->policy->mode == POLICY_MODE_ENFORCE &&
                strcmp(r->id ? r->id : "", rk->old_id) == 0;
    if (dl->stopping) {
        /* Shutting down: the recipient waits in the queue for the next run. */
        unlease(dl, rk->due.id, rk->due.rcpt);
        dl->inflight--;
    } else if (same) {
        log_info(QCOMP, "%s: MTA-STS recheck for %s: policy id=%s unchanged", rk->due.id,
                 rk->due.addr, rk->old_id);
        expire_bounce(dl, &rk->due);
    } else {
        /* A newer policy (or none): one more attempt under it. */
        log_info(QCOMP, "%s: MTA-STS recheck for %s: policy %s%s, trying again", rk->due.id,
                 rk->due.addr, r->have_policy ? "id=" : "gone",
                 r->have_policy && r->id ? r->id : "");
        rk->due.expired = false;
        file_due(dl, &rk->due, dl_now(dl));
        for (struct dest *d = dl->dests; d; d = d->next)
            dest_run(d);
    }
    recheck_free(rk);
    deliver_maybe_free(dl);
}

/* delivery_close(): the rechecks in flight give their recipients back. */
static void rechecks_drop(struct delivery *dl)
{
    while (dl->rechecks) {
        struct recheck *rk = dl->rechecks;
        if (rk->req)
            policy_cancel(rk->req);
        dl->pending_reqs--;
        unlease(dl, rk->due.id, rk->due.rcpt);
        dl->inflight--;
        recheck_free(rk);
    }
}

/* Expired recipients: bounce with 4.4.7 and the last result, via a DSN -
 * unless the last attempt failed for an enforce policy: then look for a
 * newer policy first (once per policy id). */
static void expire(struct delivery *dl, const struct queue_due *due)
{
    struct queue_message *qm = NULL;
    queue_message_read(dl->q, due->id, &qm);
    const struct queue_rcpt *qr = qm && due->rcpt < qm->n_rcpts ? &qm->rcpts[due->rcpt] : NULL;
    bool policy_caused = dl->pol && !dl->relay && qr && qr->has_result && qr->last.sts_mode &&
                         strcmp(qr->last.sts_mode, "enforce") == 0 && qr->last.dsn &&
                         strcmp(qr->last.dsn, "4.7.5") == 0;
    struct recheck *rk = policy_caused ? calloc(1, sizeof(*rk)) : NULL;
    if (rk) {
        char dom[256];
        deliver_domain_of(due->addr, dom, sizeof(dom));
        rk->dl = dl;
        rk->due = *due;
        rk->addr = xstrdup(due->addr);
        rk->sender = xstrdup(due->sender);
        str_copy(rk->old_id, qr->last.sts_id ? qr->last.sts_id : "", sizeof(rk->old_id));
        rk->due.addr = rk->addr;
        rk->due.sender = rk->sender;
        if (rk->addr && rk->sender && policy_recheck(dl->pol, dom, on_recheck, rk, &rk->req) == 0) {
            rk->next = dl->rechecks;
            dl->rechecks = rk;
            dl->pending_reqs++;
            dl->sts_rechecks++;
            queue_message_free(qm);
            return;
        }
        free(rk->addr);
        free(rk->sender);
        free(rk);
    }
    queue_message_free(qm);
    expire_bounce(dl, due);
}

static void expire_bounce(struct delivery *dl, const struct queue_due *due)
{
    struct queue_message *qm = NULL;
    queue_message_read(dl->q, due->id, &qm);
    const struct queue_rcpt *qr = qm && due->rcpt < qm->n_rcpts ? &qm->rcpts[due->rcpt] : NULL;
    const char *last = qr && qr->has_result ? qr->last.text : "";
    struct bounce_item *it = calloc(1, sizeof(*it));
    struct dsn_rcpt *dr = calloc(1, sizeof(*dr));
    if (!it || !dr) {
        free(it);
        free(dr);
        queue_message_free(qm);
        dl->inflight--;
        return;
    }
    char text[1200];
    snprintf(text, sizeof(text), "delivery time expired%s%s", last[0] ? ": " : "", last);
    it->rcpt = due->rcpt;
    it->code = qr && qr->has_result ? qr->last.smtp_code : 0;
    str_copy(it->dsn, "4.4.7", sizeof(it->dsn));
    it->text = xstrdup(text);
    if (qr && qr->has_result) {
        str_copy(it->mx, qr->last.mx ? qr->last.mx : "", sizeof(it->mx));
        str_copy(it->ip, qr->last.ip ? qr->last.ip : "", sizeof(it->ip));
    }
    dr->addr = due->addr;
    dr->orcpt = qr ? qr->orcpt : NULL;
    dr->action = "failed";
    dr->status = "4.4.7";
    dr->remote_mta = it->mx[0] ? it->mx : NULL;
    dr->reason = it->text;
    dr->last_attempt_ms = qr && qr->has_result ? qr->last.when_ms : 0;
    struct smtp_outcome o;
    memset(&o, 0, sizeof(o));
    o.action = SMTP_ACT_BOUNCE;
    str_copy(o.status, "4.4.7", sizeof(o.status));
    str_copy(o.text, text, sizeof(o.text));
    int64_t now = dl_now(dl);
    log_rcpt(due->id, due->addr, "none", due->arrival_ms, now, now, now, now, &o, NULL);
    size_t blen = 0;
    char *body = qm ? read_body(dl, due->id, qm->env.size, &blen) : NULL;
    bounce_send(dl, due->id, qm, (struct view){body ? body : "", body ? blen : 0}, it, dr, 1);
    free(body);
    free(dr);
    queue_message_free(qm);
    dl->inflight--;
}

static void file_due(struct delivery *dl, const struct queue_due *due, int64_t now)
{
    char name[256];
    if (dl->relay)
        str_copy(name, "[relayhost]", sizeof(name));
    else
        deliver_domain_of(due->addr, name, sizeof(name));
    if (pause_postpone(dl, due, now))
        return;
    struct dest *d = name[0] ? dest_get(dl, name) : NULL;
    if (!d) {
        /* No domain (or no memory): nothing sensible to try now. */
        struct queue_result res = {.dsn = "4.3.0",
                                   .text = name[0] ? "out of memory" : "no domain in address",
                                   .mx = "",
                                   .ip = "",
                                   .tls = "",
                                   .sts_mode = "",
                                   .sts_id = ""};
        report(dl, queue_defer, "deferral", due->id, due->rcpt, &res);
        dl->inflight--;
        return;
    }
    struct job *j = d->tail;
    size_t limit = (size_t)dl->conf->default_destination_recipient_limit;
    if (!j || strcmp(j->id, due->id) != 0 || j->n >= limit || j->msg.rcpt) {
        j = calloc(1, sizeof(*j));
        if (!j || !(j->r = calloc(limit, sizeof(*j->r))) || !(j->sender = xstrdup(due->sender))) {
            job_free(j);
            struct queue_result res = {.dsn = "4.3.0",
                                       .text = "out of memory",
                                       .mx = "",
                                       .ip = "",
                                       .tls = "",
                                       .sts_mode = "",
                                       .sts_id = ""};
            report(dl, queue_defer, "deferral", due->id, due->rcpt, &res);
            dl->inflight--;
            return;
        }
        j->dest = d;
        str_copy(j->id, due->id, sizeof(j->id));
        j->flags = due->flags;
        j->arrival_ms = due->arrival_ms;
        j->lease_ms = now;
        if (d->tail)
            d->tail->next = j;
        else
            d->head = j;
        d->tail = j;
        d->njobs++;
    }
    j->r[j->n].idx = due->rcpt;
    j->r[j->n].addr = xstrdup(due->addr);
    j->r[j->n].attempts = due->attempts;
    if (j->r[j->n].addr)
        j->n++;
}

static void on_lease(void *arg, int status, struct queue_due *due, size_t n)
{
    struct delivery *dl = arg;
    dl->leasing = false;
    dl->pending_reqs--;
    if (dl->closing) {
        for (size_t i = 0; i < n; i++)
            unlease(dl, due[i].id, due[i].rcpt);
        queue_due_free(due);
        deliver_maybe_free(dl);
        return;
    }
    if (status != 0) {
        log_warn(QCOMP, "cannot take due mail from the queue: %s", err_str(status));
        queue_due_free(due);
        schedule_lease(dl, 5000);
        return;
    }
    int64_t now = dl_now(dl);
    dl->inflight += n;
    for (size_t i = 0; i < n; i++) {
        if (due[i].expired)
            expire(dl, &due[i]);
        else
            file_due(dl, &due[i], now);
    }
    queue_due_free(due);
    for (struct dest *d = dl->dests; d; d = d->next)
        dest_run(d);
    if (n == LEASE_BATCH || dl->want_lease) {
        /* More may be due (a full batch, or new work arrived meanwhile). */
        schedule_lease(dl, 0);
        return;
    }
    /* Nothing more due now: wake at the schedule's next due time. */
    uv_timer_stop(&dl->due_timer);
    arm_due(dl);
}

/*
 * Set the due timer for the schedule's next due time, if that is earlier
 * than the timer already set. Bounded: at least 100 ms (due work that could
 * not be taken must not make a busy loop) and at most a minute (a missed
 * change costs at most that).
 */
static void arm_due(struct delivery *dl)
{
    if (dl->closing || dl->stopping || !dl->q)
        return;
    int64_t when = 0;
    uint64_t delay = 60000;
    if (queue_next_due(dl->q, &when) == 0) {
        int64_t d = when - dl_now(dl);
        if (d < 100)
            d = 100;
        if ((uint64_t)d < delay)
            delay = (uint64_t)d;
    }
    if (uv_is_active((uv_handle_t *)&dl->due_timer) && uv_timer_get_due_in(&dl->due_timer) <= delay)
        return;
    schedule_lease(dl, delay);
}

static void lease_now(struct delivery *dl)
{
    if (dl->closing || dl->stopping)
        return;
    if (pause_all(dl))
        return;
    if (dl->leasing) {
        dl->want_lease = true;
        return;
    }
    if (dl->inflight >= INFLIGHT_MAX) {
        dl->want_lease = true;
        return;
    }
    dl->want_lease = false;
    size_t max = LEASE_BATCH;
    if (INFLIGHT_MAX - dl->inflight < max)
        max = INFLIGHT_MAX - dl->inflight;
    int rc = queue_lease(dl->q, max, on_lease, dl);
    if (rc != 0) {
        log_warn(QCOMP, "cannot take due mail from the queue: %s", err_str(rc));
        schedule_lease(dl, 5000);
        return;
    }
    dl->leasing = true;
    dl->pending_reqs++;
}

static void on_due_timer(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    lease_now(dl);
}

static void on_kick_timer(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    lease_now(dl);
    if (dl->want_lease && dl->leasing)
        return; /* on_lease will see want_lease */
}

static void schedule_lease(struct delivery *dl, uint64_t delay_ms)
{
    if (dl->closing || dl->stopping)
        return;
    if (delay_ms == 0) {
        /* Never lease inside a callback chain: from the loop, at once. */
        uv_timer_start(&dl->kick_timer, on_kick_timer, 0, 0);
        return;
    }
    uv_timer_start(&dl->due_timer, on_due_timer, delay_ms, 0);
}

/* Idle sessions past smtp_connection_cache_time_limit say QUIT. */
static void on_sweep(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    int64_t now = dl_now(dl);
    int64_t limit = dl->conf->smtp_connection_cache_time_limit * 1000;
    bool any = false;
    for (struct dest *d = dl->dests; d; d = d->next) {
        struct conn *cn = d->idle;
        while (cn) {
            struct conn *next = cn->next;
            if (dl->stopping || now - cn->idle_since >= limit) {
                idle_remove(cn);
                smtp_client_quit(cn->c);
            } else {
                any = true;
            }
            cn = next;
        }
    }
    if (!any)
        uv_timer_stop(&dl->sweep_timer);
}

/* ---- life cycle ---------------------------------------------------------------------- */

/* Proactive refresh (RFC 8461 5.1, 10.2): cached policies are checked and
 * refetched before they lapse, off the delivery path. */
static void on_sts_timer(uv_timer_t *t)
{
    struct delivery *dl = t->data;
    if (dl->pol && !dl->closing)
        policy_refresh_due(dl->pol, 20);
}

static int count_entry(void *arg, const struct policy_entry *e)
{
    size_t *n = arg;
    (void)e;
    (*n)++;
    return 0;
}

/* convoyctl status: "sts": the policy cache and what delivery saw. */
void delivery_sts_status(struct delivery *dl, json_t *status)
{
    if (!dl || !dl->pol)
        return;
    size_t n = 0;
    struct policy_cache *c = policy_cache(dl->pol);
    if (c)
        policy_cache_each(c, count_entry, &n);
    json_t *o = json_object();
    json_object_set_new(o, "policy_cache_size", json_integer((json_int_t)n));
    json_object_set_new(o, "overrides", json_integer((json_int_t)policy_overrides_count(dl->ov)));
    json_object_set_new(o, "testing_failures", json_integer((json_int_t)dl->sts_testing_failures));
    json_object_set_new(o, "enforce_failures", json_integer((json_int_t)dl->sts_enforce_failures));
    json_object_set_new(o, "rechecks", json_integer((json_int_t)dl->sts_rechecks));
    json_object_set_new(status, "sts", o);
}

static void dests_free(struct delivery *dl)
{
    struct dest *d = dl->dests;
    while (d) {
        struct dest *next = d->next;
        struct job *j;
        while ((j = dest_pop(d))) {
            for (size_t i = 0; i < j->n; i++)
                unlease(dl, j->id, j->r[i].idx);
            job_free(j);
        }
        if (d->preq)
            policy_cancel(d->preq);
        policy_sts_clear(&d->sts);
        free(d->targets);
        free(d);
        d = next;
    }
    dl->dests = NULL;
}

void deliver_maybe_free(struct delivery *dl)
{
    if (!dl->closing || dl->open_handles > 0 || dl->nconns > 0 || dl->pending_reqs > 0 ||
        deliver_pause_busy(dl) > 0)
        return;
    dests_free(dl);
    if (dl->pending_reqs > 0)
        return; /* unleases just issued: freed when they call back */
    buf_free(&dl->pause.text);
    tls_ctx_free(dl->tls_ctx);
    policy_overrides_free(dl->ov);
    conf_unref(dl->conf);
    free(dl);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct delivery *dl = h->data;
    dl->open_handles--;
    deliver_maybe_free(dl);
}

/* The client context for MX hosts: smtp_tls_CAfile, or the system store -
 * the same trust store the policy fetch uses (RFC 8461 4.2, 3.3). */
static struct tls_ctx *delivery_tls_ctx(const struct conf *c, char *why, size_t why_size)
{
    const char *ca = c->smtp_tls_CAfile && c->smtp_tls_CAfile[0] ? c->smtp_tls_CAfile : NULL;
    return tls_ctx_client_new(ca, why, why_size);
}

/* The MTA-STS engine with its persistent cache in the queue directory
 * (<queue_directory>/sts.lmdb, where convoyctl sts looks too). */
static int delivery_policy_new(struct delivery *dl, struct buf *err)
{
    const struct conf *c = dl->conf;
    struct policy_options o;
    dl->opt.policy_options(c, &o);
    char path[4096];
    int n = snprintf(path, sizeof(path), "%s/%s", c->queue_directory, POLICY_CACHE_FILE);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        buf_printf(err, "queue_directory: path too long for the MTA-STS cache");
        return ERR_TOOBIG;
    }
    o.cache_path = path;
    char why[512] = "";
    int rc = policy_new(dl->loop, dl->dns, &o, &dl->pol, why, sizeof(why));
    if (rc != 0) {
        buf_printf(err, "MTA-STS: %s", why[0] ? why : err_str(rc));
        dl->pol = NULL;
    }
    return rc;
}

int delivery_new(const struct delivery_options *opt, struct delivery **out, struct buf *err)
{
    *out = NULL;
    if (!opt->queue) {
        buf_printf(err, "delivery needs an open queue");
        return ERR_INVAL;
    }
    if (!opt->loop || !opt->conf || !opt->helo_name || !opt->dns_options || !opt->policy_options) {
        buf_printf(err, "delivery: incomplete options");
        return ERR_INVAL;
    }
    struct delivery *dl = calloc(1, sizeof(*dl));
    if (!dl)
        return ERR_NOMEM;
    dl->opt = *opt;
    dl->loop = opt->loop;
    dl->conf = conf_ref(opt->conf);
    dl->q = opt->queue;
    dl->opt.helo_name(dl->conf, dl->helo, sizeof(dl->helo));
    if (dl->conf->relayhost && dl->conf->relayhost[0]) {
        if (conf_parse_hostport(dl->conf->relayhost, true, &dl->relayhost) != 0) {
            buf_printf(err, "relayhost: cannot parse \"%s\"", dl->conf->relayhost);
            conf_unref(dl->conf);
            free(dl);
            return ERR_INVAL;
        }
        dl->relay = true;
    }
    struct dns_options dno;
    dl->opt.dns_options(dl->conf, &dno);
    int rc = dns_new(dl->loop, &dno, &dl->dns);
    if (rc != 0) {
        buf_printf(err, "delivery: cannot start the DNS resolver: %s", err_str(rc));
        conf_unref(dl->conf);
        free(dl);
        return rc;
    }
    /* The client context exists whatever smtp_tls_security_level says: an
     * MTA-STS policy or a tls_policy_file entry may require TLS. */
    {
        char why[256] = "";
        dl->tls_ctx = delivery_tls_ctx(dl->conf, why, sizeof(why));
        if (!dl->tls_ctx) {
            if (strcmp(dl->conf->smtp_tls_security_level, "verify") == 0) {
                buf_printf(err, "smtp_tls_CAfile: %s", why);
                dns_free(dl->dns);
                conf_unref(dl->conf);
                free(dl);
                return ERR_TLS;
            }
            log_warn(COMPONENT, "TLS for delivery is off: %s", why);
        }
    }
    dl->ov = policy_overrides_load(dl->conf->tls_policy_file ? dl->conf->tls_policy_file : "", err);
    if (!dl->ov) {
        /* One line per problem; the caller prints the text as one. */
        while (err->len > 0 && err->data[err->len - 1] == '\n')
            err->data[--err->len] = '\0';
        tls_ctx_free(dl->tls_ctx);
        dns_free(dl->dns);
        conf_unref(dl->conf);
        free(dl);
        return ERR_INVAL;
    }
    rc = delivery_policy_new(dl, err);
    if (rc != 0) {
        policy_overrides_free(dl->ov);
        tls_ctx_free(dl->tls_ctx);
        dns_free(dl->dns);
        conf_unref(dl->conf);
        free(dl);
        return rc;
    }
    uv_timer_init(dl->loop, &dl->due_timer);
    uv_timer_init(dl->loop, &dl->kick_timer);
    uv_timer_init(dl->loop, &dl->sweep_timer);
    uv_timer_init(dl->loop, &dl->sts_timer);
    dl->due_timer.data = dl->kick_timer.data = dl->sweep_timer.data = dl->sts_timer.data = dl;
    dl->open_handles = 4;
    uint64_t tick = dl->opt.sts_refresh_tick_ms ? dl->opt.sts_refresh_tick_ms : 60000;
    uv_timer_start(&dl->sts_timer, on_sts_timer, tick, tick);
    /* Pauses set before a restart hold from the first lease on. */
    deliver_pause_load(dl);
    log_info(QCOMP, "delivery started%s%s", dl->relay ? ": relayhost " : "",
             dl->relay ? dl->conf->relayhost : "");
    schedule_lease(dl, 0);
    *out = dl;
    return 0;
}

void delivery_kick(struct delivery *dl)
{
    if (dl && !dl->closing && !dl->stopping)
        schedule_lease(dl, 0);
}

void delivery_stop(struct delivery *dl)
{
    if (!dl || dl->stopping)
        return;
    dl->stopping = true;
    uv_timer_stop(&dl->due_timer);
    uv_timer_stop(&dl->kick_timer);
    /* Waiting jobs go back to the queue; idle sessions quit. */
    for (struct dest *d = dl->dests; d; d = d->next) {
        struct job *j;
        while ((j = dest_pop(d))) {
            for (size_t i = 0; i < j->n; i++) {
                unlease(dl, j->id, j->r[i].idx);
                dl->inflight--;
            }
            job_free(j);
        }
        struct conn *cn;
        while ((cn = d->idle)) {
            idle_remove(cn);
            smtp_client_quit(cn->c);
        }
    }
}

size_t delivery_active(const struct delivery *dl)
{
    if (!dl)
        return 0;
    return dl->nconns + dl->pending_reqs + deliver_pause_busy(dl);
}

void delivery_close(struct delivery *dl)
{
    if (!dl || dl->closing)
        return;
    delivery_stop(dl);
    dl->closing = true;
    for (struct dest *d = dl->dests; d; d = d->next) {
        if (d->query) {
            dns_cancel(d->query);
            d->query = NULL;
        }
        if (d->preq) {
            policy_cancel(d->preq);
            d->preq = NULL;
        }
    }
    rechecks_drop(dl);
    /* Abort every session. A message in flight gets its SMTP_EV_DONE inside
     * the abort (its recipients are deferred now); a job whose session was
     * not ready yet goes back to the queue here, so that nothing after this
     * call touches the queue (the daemon closes it next). */
    for (struct conn *cn = dl->conns; cn; cn = cn->all_next) {
        if (cn->c)
            smtp_client_abort(cn->c);
        if (cn->job) {
            for (size_t i = 0; i < cn->job->n; i++) {
                unlease(dl, cn->job->id, cn->job->r[i].idx);
                dl->inflight--;
            }
            job_free(cn->job);
            cn->job = NULL;
        }
    }
    dl->q = NULL;
    policy_free(dl->pol);
    dl->pol = NULL;
    dns_free(dl->dns);
    dl->dns = NULL;
    uv_close((uv_handle_t *)&dl->sts_timer, on_handle_closed);
    uv_close((uv_handle_t *)&dl->due_timer, on_handle_closed);
    uv_close((uv_handle_t *)&dl->kick_timer, on_handle_closed);
    uv_close((uv_handle_t *)&dl->sweep_timer, on_handle_closed);
}

/* ---- reload ------------------------------------------------------------------------------- */

/* Everything a reload needs, built and checked before anything changes. */
struct delivery_update {
    struct conf *conf;
    struct policy_overrides *ov;
    struct tls_ctx *ctx;
    struct policy_update *pu;
    bool sts_changed;
    char no_tls_why[256]; /* why ctx is NULL (logged when applied) */
};

void delivery_reload_cancel(struct delivery_update *u)
{
    if (!u)
        return;
    policy_overrides_free(u->ov);
    tls_ctx_free(u->ctx);
    policy_update_free(u->pu);
    conf_unref(u->conf);
    free(u);
}

static bool lists_differ(const struct conf_list *a, const struct conf_list *b)
{
    if (a->n != b->n)
        return true;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return true;
    return false;
}

/* Do two snapshots differ in a setting of the MTA-STS engine? */
static bool sts_settings_differ(const struct delivery *dl, const struct conf *a,
                                const struct conf *b)
{
    struct policy_options x, y;
    dl->opt.policy_options(a, &x);
    dl->opt.policy_options(b, &y);
    return strcmp(x.ca_file ? x.ca_file : "", y.ca_file ? y.ca_file : "") != 0 ||
           x.https_port != y.https_port || x.fetch_timeout_ms != y.fetch_timeout_ms ||
           x.connect_timeout_ms != y.connect_timeout_ms || x.max_policy_size != y.max_policy_size ||
           x.txt_check_s != y.txt_check_s || x.refresh_s != y.refresh_s ||
           x.retry_after_s != y.retry_after_s;
}

int delivery_reload_prepare(struct delivery *dl, struct conf *c, struct delivery_update **out,
                            struct buf *err)
{
    *out = NULL;
    if (!dl || dl->closing)
        return 0;
    struct delivery_update *u = calloc(1, sizeof(*u));
    if (!u)
        return ERR_NOMEM;
    u->conf = conf_ref(c);
    /* The override file first: a broken one refuses the whole reload (a
     * typo must never loosen TLS). */
    u->ov = policy_overrides_load(c->tls_policy_file ? c->tls_policy_file : "", err);
    if (!u->ov) {
        delivery_reload_cancel(u);
        return ERR_INVAL;
    }
    char why[512] = "";
    u->ctx = delivery_tls_ctx(c, why, sizeof(why));
    if (!u->ctx && strcmp(c->smtp_tls_security_level, "verify") == 0) {
        buf_printf(err, "smtp_tls_CAfile: %s\n", why);
        delivery_reload_cancel(u);
        return ERR_TLS;
    }
    if (!u->ctx)
        str_copy(u->no_tls_why, why, sizeof(u->no_tls_why));
    /* The MTA-STS engine is reconfigured in place: its cache, the lookups
     * and fetches in flight stay. Its trust store is read again on every
     * reload (as the one for MX hosts above); one that cannot be loaded
     * refuses the reload, as it would refuse a start. */
    if (dl->pol) {
        struct policy_options o;
        dl->opt.policy_options(c, &o);
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", c->queue_directory, POLICY_CACHE_FILE);
        o.cache_path = path;
        int rc = policy_update_prepare(dl->pol, &o, &u->pu, why, sizeof(why));
        if (rc != 0) {
            buf_printf(err, "%s: %s\n",
                       rc == ERR_TLS ? "smtp_tls_CAfile (MTA-STS policy hosts)" : "MTA-STS", why);
            delivery_reload_cancel(u);
            return rc;
        }
        u->sts_changed = sts_settings_differ(dl, dl->conf, c);
    }
    *out = u;
    return 0;
}

void delivery_reload_apply(struct delivery *dl, struct delivery_update *u)
{
    if (!u)
        return;
    if (!dl || dl->closing) {
        delivery_reload_cancel(u);
        return;
    }
    const struct conf *c = u->conf;
    if (!u->ctx)
        log_warn(COMPONENT, "TLS for delivery is off: %s", u->no_tls_why);
    if (strcmp(c->relayhost ? c->relayhost : "", dl->conf->relayhost ? dl->conf->relayhost : "") !=
        0)
        log_warn(QCOMP, "relayhost changes take effect at the next restart");
    if (lists_differ(&c->dns_servers, &dl->conf->dns_servers) ||
        c->dns_timeout != dl->conf->dns_timeout || c->dns_tries != dl->conf->dns_tries)
        log_warn(QCOMP, "dns_servers, dns_timeout and dns_tries changes take effect at the next "
                        "restart");
    /* New sessions use the new snapshot; sessions in progress keep their
     * context (reference counted) and their copy of the override entry. */
    policy_overrides_free(dl->ov);
    dl->ov = u->ov;
    u->ov = NULL;
    for (struct dest *d = dl->dests; d; d = d->next)
        dest_quit_idle(d);
    tls_ctx_free(dl->tls_ctx);
    dl->tls_ctx = u->ctx;
    u->ctx = NULL;
    if (u->pu) {
        policy_update_apply(dl->pol, u->pu);
        u->pu = NULL;
        if (u->sts_changed)
            log_info(QCOMP,
                     "MTA-STS: new settings in force (https port %lld, fetch timeout %llds, "
                     "connect timeout %llds, policy size %lld, TXT check %llds, refresh %llds, "
                     "retry %llds); cached policies kept",
                     (long long)c->sts_policy_https_port, (long long)c->sts_fetch_timeout,
                     (long long)c->sts_connect_timeout, (long long)c->sts_max_policy_size,
                     (long long)c->sts_txt_check_interval, (long long)c->sts_refresh_interval,
                     (long long)c->sts_fetch_retry_time);
    }
    conf_unref(dl->conf);
    dl->conf = conf_ref(u->conf);
    dl->opt.helo_name(dl->conf, dl->helo, sizeof(dl->helo));
    log_info(QCOMP, "delivery: configuration reloaded, %zu TLS policy override(s)",
             policy_overrides_count(dl->ov));
    delivery_reload_cancel(u); /* what is left of it */
}

int delivery_reload(struct delivery *dl, struct conf *c, struct buf *err)
{
    struct delivery_update *u = NULL;
    int rc = delivery_reload_prepare(dl, c, &u, err);
    if (rc == 0)
        delivery_reload_apply(dl, u);
    return rc;
}

/* ---- pauses (the table is in deliver_admin.c) ------------------------------------------ */

#define PAUSE_RECHECK_MS (5 * 60000)

/* Everything paused: lease nothing; look again when the pause ends. */
static bool pause_all(struct delivery *dl)
{
    int64_t until = 0, now = dl_now(dl);
    if (!deliver_paused(dl, NULL, now, &until))
        return false;
    if (until)
        uv_timer_start(&dl->due_timer, on_due_timer, (uint64_t)(until - now) + 1, 0);
    return true;
}

/* A leased recipient of a paused domain goes back to the queue, due at the
 * pause's end (or at the next recheck), without counting an attempt. */
static bool pause_postpone(struct delivery *dl, const struct queue_due *due, int64_t now)
{
    char dom[256];
    int64_t until = 0;
    deliver_domain_of(due->addr, dom, sizeof(dom));
    if (!deliver_paused(dl, dom, now, &until))
        return false;
    int64_t when = now + PAUSE_RECHECK_MS;
    if (until && until < when)
        when = until;
    struct req *r = req_new(dl, due->id, due->rcpt, "unlease");
    if (r && queue_postpone(dl->q, due->id, due->rcpt, when, req_done, r) == 0)
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
        deliver_domain_of(j->r[i].addr, dom, sizeof(dom));
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
        schedule_lease(dl, 0);
}
