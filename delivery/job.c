/*
 * job.c - jobs: the recipients of one message to one destination that one
 * SMTP transaction carries. Loading a job's envelope from the queue,
 * finishing it (one log line per recipient, the verdict's action applied:
 * queue_delivered, queue_defer, or a DSN first and then the bounce record),
 * and the queue reports of the engine.
 *
 * Logs: one line per recipient and attempt,
 *   ID: to=<r>, relay=host[ip]:port, delay=D, delays=a/b/c/d, dsn=X.Y.Z,
 *   status=sent|deferred|bounced (reply or reason)[, POLICY, tls=VERDICT]
 * (POLICY: sts=enforce id=X, sts=testing id=X, sts=none, tls_policy=LEVEL;
 * VERDICT: verified, encrypted, none; a testing failure adds
 * sts_failure=TYPE), where a = arrival to lease, b = lease to connection
 * start (queueing and DNS), c = connection set-up (greeting, EHLO, TLS),
 * d = transmission.
 *
 * Invariants: no recipient is reported delivered without the remote 250
 * for it; every leased recipient is reported exactly once (delivered,
 * deferred, bounced, or given back with queue_unlease on shutdown before
 * an attempt).
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
#include "verdict.h"

/* ---- queue reports ------------------------------------------------------------ */

void dl_req_done(void *arg, int status)
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
        sched_arm_due(dl);
    deliver_maybe_free(dl);
}

struct req *dl_req_new(struct delivery *dl, const char *id, uint32_t rcpt, const char *what)
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

void dl_report(struct delivery *dl, report_fn fn, const char *what, const char *id, uint32_t rcpt,
               const struct queue_result *res)
{
    if (!dl->q)
        return; /* closed: the queue gives leases back when next opened */
    struct req *r = dl_req_new(dl, id, rcpt, what);
    if (!r) {
        log_err(QCOMP, "%s: out of memory recording %s", id, what);
        return;
    }
    int rc = fn(dl->q, id, rcpt, res, dl_req_done, r);
    if (rc != 0) {
        log_warn(QCOMP, "%s: cannot record %s of recipient %u: %s", id, what, (unsigned)rcpt,
                 err_str(rc));
        free(r);
        return;
    }
    dl->pending_reqs++;
}

void dl_unlease(struct delivery *dl, const char *id, uint32_t rcpt)
{
    if (!dl->q)
        return;
    struct req *r = dl_req_new(dl, id, rcpt, "unlease");
    if (!r)
        return;
    if (queue_unlease(dl->q, id, rcpt, dl_req_done, r) != 0) {
        free(r);
        return;
    }
    dl->pending_reqs++;
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

void deliver_log_rcpt(const char *id, const char *addr, const char *relay, int64_t arrival,
                      int64_t lease, int64_t conn, int64_t ready, int64_t done, bool attempted,
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
    if (!attempted) {
        /* Not taken from the queue for an attempt (the operator's bounce):
         * all the time was spent waiting. */
        str_copy(b, "0", sizeof(b));
        str_copy(c, "0", sizeof(c));
        str_copy(d, "0", sizeof(d));
    }
    metrics_delivery_result(status_word(o->action), o->status[0] ? o->status : NULL,
                            (double)(done - arrival) / 1000.0);
    log_info(
        COMPONENT, "%s: to=<%s>, relay=%s, delay=%s, delays=%s/%s/%s/%s, dsn=%s, status=%s (%s)%s",
        id, addr, relay && relay[0] ? relay : "none", delay, a, b, c, d,
        o->status[0] ? o->status : "4.0.0", status_word(o->action), o->text, extra ? extra : "");
}

void dl_defer_due(struct delivery *dl, const struct queue_due *due, const char *text)
{
    struct queue_result res = {
        .dsn = "4.3.0", .text = text, .mx = "", .ip = "", .tls = "", .sts_mode = "", .sts_id = ""};
    dl_report(dl, queue_defer, "deferral", due->id, due->rcpt, &res);
    dl->inflight--;
}

/* ---- jobs -------------------------------------------------------------------------- */

bool job_add_rcpt(struct job *j, const struct queue_due *due)
{
    if (j->n == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 2;
        struct jrcpt *r = realloc(j->r, cap * sizeof(*r));
        if (!r)
            return false;
        j->r = r;
        j->cap = cap;
    }
    char *addr = dl_strdup(due->addr);
    if (!addr)
        return false;
    j->r[j->n].idx = due->rcpt;
    j->r[j->n].addr = addr;
    j->r[j->n].attempts = due->attempts;
    j->n++;
    return true;
}

void job_free(struct job *j)
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

void conn_tls_summary(const struct smtp_client *c, char *out, size_t size)
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
void job_finish(struct delivery *dl, struct job *j, const struct smtp_outcome *all,
                const struct verdict *all_v)
{
    int64_t now = dl_now(dl);
    /* The policy that applied and the TLS verdict, after the Postfix-shaped
     * part of the log line; a testing failure is kept with the TLS facts of
     * the recipient's last result (RFC 8460 result type, for reports). */
    char extra[256] = "", tlsrec[400];
    if (!j->label[0] && j->dest)
        job_policy(j, NULL);
    if (j->label[0])
        snprintf(extra, sizeof(extra), ", %s, tls=%s%s%s", j->label,
                 j->verdict[0] ? j->verdict : "none", j->report[0] ? ", sts_failure=" : "",
                 j->report);
    if (JOB_TLS_OPTIONAL(j)) {
        size_t el = strlen(extra);
        snprintf(extra + el, sizeof(extra) - el, ", tls_required=no");
    }
    /* DANE (RFC 7672): the queue record keeps what DANE said with the TLS
     * facts ("... dane=verified 3 1 1"). */
    snprintf(tlsrec, sizeof(tlsrec), "%s%s%s%s%s", j->tls, j->report[0] ? " sts_failure=" : "",
             j->report, j->dane[0] && j->tls[0] ? " " : "", j->dane);
    struct dsn_item *items = calloc(j->n ? j->n : 1, sizeof(*items));
    size_t nb = 0;
    /* Deferred recipients, for the message's delay warning. */
    struct delay_rcpt *delayed =
        dl->conf->delay_warning_time > 0 ? calloc(j->n ? j->n : 1, sizeof(*delayed)) : NULL;
    size_t nd = 0;
    for (size_t i = 0; i < j->n; i++) {
        /* The verdict decides what the outcome means (verdict.c); the
         * outcome gives the texts. */
        struct verdict v;
        const struct smtp_outcome *src = all ? all : &j->srcpt[i].out;
        if (all_v)
            v = *all_v;
        else
            verdict_reply(src, &v);
        struct smtp_outcome eff = *src;
        if (v.reason == VR_NO_RESULT) {
            memset(&eff, 0, sizeof(eff));
            str_copy(eff.text, "delivery ended without a result", sizeof(eff.text));
        }
        eff.action = verdict_smtp_action(v.action);
        str_copy(eff.status, v.status, sizeof(eff.status));
        const struct smtp_outcome *o = &eff;
        deliver_log_rcpt(j->id, j->r[i].addr, j->relay, j->arrival_ms, j->lease_ms, j->conn_ms,
                         j->ready_ms, now, true, o, extra);
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
            dl_report(dl, queue_delivered, "delivery", j->id, j->r[i].idx, &res);
        } else if (o->action == SMTP_ACT_BOUNCE && items) {
            struct dsn_item *it = &items[nb++];
            it->rcpt = j->r[i].idx;
            it->code = o->code;
            str_copy(it->dsn, o->status, sizeof(it->dsn));
            it->text = dl_strdup(o->text);
            str_copy(it->mx, j->mx, sizeof(it->mx));
            str_copy(it->ip, j->ip, sizeof(it->ip));
            str_copy(it->tls, j->tls, sizeof(it->tls));
            /* A host that replied is the DSN's Remote-MTA. */
            str_copy(it->remote_mta, o->code ? j->mx : "", sizeof(it->remote_mta));
            it->diag = o->reply[0] ? dl_strdup(o->reply) : NULL;
            it->last_attempt_ms = now;
        } else {
            dl_report(dl, queue_defer, "deferral", j->id, j->r[i].idx, &res);
            if (delayed)
                delayed[nd++] = (struct delay_rcpt){.rcpt = j->r[i].idx, .o = *o};
        }
    }
    if (nd > 0)
        dsn_delay_check(dl, j, delayed, nd);
    free(delayed);
    if (nb > 0) {
        /* The DSN needs the message: read it if the job never started. */
        if (!j->qm)
            queue_message_read(dl->q, j->id, &j->qm);
        if (!j->body && j->qm)
            j->body = dl_read_body(dl, j->id, j->qm->env.size, &j->body_len);
        struct view body = {j->body ? j->body : "", j->body ? j->body_len : 0};
        dsn_send(dl, j->id, j->qm, body, DSN_FAILED, items, nb, NULL);
        items = NULL;
    }
    free(items);
    job_free(j);
    if (dl->inflight < INFLIGHT_MAX && dl->want_lease)
        sched_lease_in(dl, 0);
}

/* A whole job ends without a session outcome per recipient (DNS failure, every
 * address failed). */
void job_fail(struct delivery *dl, struct job *j, const struct verdict *v, const char *text)
{
    struct smtp_outcome o;
    memset(&o, 0, sizeof(o));
    str_copy(o.text, text, sizeof(o.text));
    job_finish(dl, j, &o, v);
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
int job_load(struct delivery *dl, struct job *j)
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
