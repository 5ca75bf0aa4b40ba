/*
 * mta.h - the inside of convoyd: the state the daemon's parts share, and the
 * entry points of those parts. Private to mta/ (the daemon); no other module
 * includes it. convoyctl (ctl/) shares only ctl_proto.h with it.
 *
 * Threads: everything here runs on the one loop thread.
 */
#ifndef CONVOY_MTA_H
#define CONVOY_MTA_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include <jansson.h>

#include "base.h"
#include "conf.h"
#include "ctl_proto.h"
#include "settings.h"

struct delivery;
struct tlsrpt_store;
struct shared;
struct queue;
struct submission;
struct submission_update;

/* The running daemon. */
struct mta {
    uv_loop_t *loop;
    struct conf *conf; /* current snapshot; replaced on reload */
    const char *conf_path;
    struct queue *queue; /* opened before any listener starts */
    struct submission *submission;
    struct delivery *delivery;   /* the engine (delivery/delivery.h); NULL when not running */
    struct tlsrpt_store *tlsrpt; /* TLS-RPT counts (policy.h); NULL when tlsrpt_enable = no */
    /* shared_state's client (shared/shared.h), or NULL: one node. It lives
     * as long as the engine; a change of shared_state takes a restart. */
    struct shared *shared;
    int64_t started_ms;
    bool stopping;
    /* Reload the configuration from the same file and overrides (set by
     * convoyd). On failure every problem is appended to errors, one per
     * line, and logged; the old snapshot stays in force. */
    int (*reload)(struct mta *m, struct buf *errors);
    /* Set by mta_delivery_start(): called after a commit made new work due
     * (a submission, a release, a retry), so new mail goes out at once. */
    void (*on_new_work)(struct mta *m);
};

/*
 * daemon_queue.c: open the queue in queue_directory with the settings of
 * m->conf before any service starts; close it (waiting for the writer
 * thread to finish its last commit) after every service has stopped.
 */
int mta_queue_open(struct mta *m, struct buf *err);
void mta_queue_close(struct mta *m);

/*
 * daemon_delivery.c: the delivery engine of the daemon. mta_delivery_start()
 * creates it from m->conf and m->queue (delivery_new()), kicks it on new
 * work and adds its "sts" to status. mta_delivery_close() closes it (it
 * frees itself once the loop has run) and forgets it.
 */
int mta_delivery_start(struct mta *m, struct buf *err);
void mta_delivery_close(struct mta *m);

/*
 * submission.c: the SMTP listeners that accept mail into the queue.
 * submission_start() binds every smtpd_listen address with its role (an
 * error names the entry) and starts accepting. submission_stop() stops
 * accepting new connections; sessions in progress go on.
 * submission_active() counts them. submission_close() drops them all (the
 * clients see the connection close; nothing they had not been given a 250
 * for was accepted).
 * Reload, in two steps as delivery's: submission_reload_prepare() checks
 * the new snapshot's server options and binds the addresses that are new
 * (a failure closes them again and changes nothing); then
 * submission_reload_apply() (cannot fail: new sessions get the new
 * options, removed addresses stop accepting while their sessions finish,
 * kept ones keep their socket and take their new role) or
 * submission_reload_cancel(). *u is NULL when there is no server.
 */
int submission_start(struct mta *m, struct buf *err);
void submission_stop(struct mta *m);
size_t submission_active(const struct mta *m);
void submission_close(struct mta *m);
int submission_reload_prepare(struct mta *m, struct conf *c, struct submission_update **u,
                              struct buf *err);
void submission_reload_apply(struct mta *m, struct submission_update *u);
void submission_reload_cancel(struct mta *m, struct submission_update *u);

/*
 * tlsrpt.c: TLS-RPT (RFC 8460). mta_tlsrpt_start() opens the store (when
 * tlsrpt_enable) into m->tlsrpt before delivery starts, syncs it every
 * minute, sends completed days after midnight UTC and registers the
 * control command "tlsrpt_send". mta_tlsrpt_stop() stops the timers;
 * mta_tlsrpt_close() closes the store, after delivery is closed.
 */
int mta_tlsrpt_start(struct mta *m, struct buf *err);
void mta_tlsrpt_stop(struct mta *m);
void mta_tlsrpt_close(struct mta *m);
/*
 * tlsrpt_fleet.c: TLS-RPT across the fleet (shared_state). start: this
 * node's records go to Redis once a second when they change, and all of
 * them after every (re)connect; stop: a last write. tlsrpt_fleet_claim():
 * who sends the report of (day, domain) (full: a finished day). 0: cb
 * once, later, with FLEET_SEND (seq: the fleet's report number, sum: the
 * fleet's record, put into the store already for a full day), FLEET_SENT
 * (who: the report-id the fleet sent), FLEET_BUSY (who: the node sending
 * it now) or FLEET_AWAY (who: why); not 0 (shared_state is not up): cb
 * is never called. tlsrpt_fleet_sent(): the fleet's full report went out.
 */
enum fleet_outcome { FLEET_SEND, FLEET_SENT, FLEET_BUSY, FLEET_AWAY };
typedef void (*tlsrpt_fleet_cb)(void *arg, enum fleet_outcome o, uint32_t seq, const char *who,
                                const char *sum, size_t len);
void tlsrpt_fleet_start(struct mta *m, struct tlsrpt_store *store);
void tlsrpt_fleet_stop(struct mta *m);
void tlsrpt_fleet_close(struct mta *m);
int tlsrpt_fleet_claim(struct mta *m, const char *day, const char *domain, bool full,
                       uint32_t local_seq, tlsrpt_fleet_cb cb, void *arg);
void tlsrpt_fleet_sent(struct mta *m, const char *day, const char *domain, const char *report_id);
/* submission.c: the DKIM key table in force (NULL: none). */
struct dkim_keytable *submission_dkim(struct mta *m);

/*
 * metrics.c: the Prometheus endpoint. metrics_start() registers the
 * collector of the queue and session gauges and, when metrics_listen is
 * set, binds it and serves GET /metrics (an error names the address).
 * metrics_stop() closes the listener; requests in progress finish.
 */
int metrics_start(struct mta *m, struct buf *err);
void metrics_stop(struct mta *m);

/*
 * signing.c: DKIM signing at acceptance. signing_load() loads the key table
 * of a snapshot (*out NULL when dkim_key_table is empty; errors appended
 * to err as FILE:LINE: why). signing_take() looks at an accepted message:
 * 0 when it is not to be signed (no keys for its From domain: the caller
 * queues it as it is), 1 when it took it (it queues the signed copy with
 * enqueue and calls smtpd_session_done() itself), or an error.
 */
struct dkim_keytable;
struct smtpd_session;
struct smtpd_message;
typedef int (*mta_enqueue_fn)(struct mta *m, struct smtpd_session *s,
                              const struct smtpd_message *msg, const char *body, size_t len,
                              void (*cb)(void *arg, int status, const char *id), void *arg);
/* enqueue with cb NULL: the message will not be queued after all (its
 * signing failed): let go of what it holds. */
/* A streamed message (msg->streamed): its header fields (the fields the
 * server added, then the client's header section) and the relaxed body
 * hash computed as the body went by. enqueue then gets only the
 * signatures, to go in front of the fields. */
struct signing_streamed {
    struct view head;
    const uint8_t *body_hash;
};
int signing_load(const struct conf *c, struct dkim_keytable **out, struct buf *err);
int signing_take(struct mta *m, struct dkim_keytable *keys, struct smtpd_session *s,
                 const struct smtpd_message *msg, const struct signing_streamed *st,
                 mta_enqueue_fn enqueue);
/* Would a message with this header section be signed (keys for its From
 * domain)? For a stream, to know whether to hash its body. */
bool signing_wanted(struct dkim_keytable *keys, const char *head, size_t len);

/*
 * control.c: the control socket (<queue_directory>/control.sock, mode 0660,
 * line-delimited JSON). A handler gets the parsed request object (borrowed)
 * and must call control_reply() exactly once, now or later from the loop;
 * the response is stolen, and "ok": true is added when absent.
 * Built in: "status" (plus what status hooks add), "reload", and the
 * operator commands of control_queue.c.
 */
struct control_req;
typedef void (*control_handler)(struct mta *m, struct control_req *req, json_t *request);
typedef void (*control_status_hook)(struct mta *m, json_t *status);
int control_start(struct mta *m, struct buf *err);
void control_stop(struct mta *m);
void control_register(const char *cmd, control_handler fn);
void control_add_status_hook(control_status_hook fn);
void control_reply(struct control_req *req, json_t *response);
void control_reply_error(struct control_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* control_queue.c: register the operator commands (queue.retry, queue.hold,
 * queue.release, queue.delete, queue.bounce, pause, resume) and the pause
 * status hook. Called by control_start(). */
void control_queue_register(void);

#endif
