/*
 * dsn.c - the one DSN path (RFC 3464): failure bounces, expiry bounces and
 * the operator's bounce all go through here. Recipients whose NOTIFY
 * excludes FAILURE are left out of the DSN; none is sent to the null sender
 * (RFC 5321 6.1); a DSN too big with RET=FULL is built again with the
 * headers only; it is submitted from the null sender, and only after it is
 * committed are the recipients marked bounced. If it cannot be queued the
 * recipients are deferred instead, so nothing is lost.
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

/* ---- bounces (DSN first, then the bounce record) --------------------------------- */

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
        dl_report(b->dl, as_bounce ? queue_bounce : queue_defer, as_bounce ? "bounce" : "defer",
                  b->id, it->rcpt, &res);
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
void bounce_send(struct delivery *dl, const char *id, const struct queue_message *qm,
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
