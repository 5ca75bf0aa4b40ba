/*
 * mta.h - the inside of convoyd: the state the daemon's parts share, and the
 * entry points of those parts. Private to mta/ (the programs and the
 * orchestrator); no other module includes it.
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

struct queue;
struct submission;

/* The running daemon. */
struct mta {
    uv_loop_t *loop;
    struct conf *conf; /* current snapshot; replaced on reload */
    const char *conf_path;
    struct queue *queue; /* opened before any listener starts */
    struct submission *submission;
    int64_t started_ms;
    bool stopping;
    /* Reload the configuration from the same file and overrides (set by
     * convoyd). On failure every problem is appended to errors, one per
     * line, and logged; the old snapshot stays in force. */
    int (*reload)(struct mta *m, struct buf *errors);
    /* Set by the delivery engine: called after a commit made new work due
     * (a submission, a release, a retry), so new mail goes out at once. */
    void (*on_new_work)(struct mta *m);
};

/*
 * settings.c: the configuration mapped onto the resolver's and the MTA-STS
 * engine's options (the caller sets the policy cache path), and the name
 * Convoy uses in EHLO and DSNs (smtp_helo_name, myhostname, the host name).
 */
struct dns_options;
struct policy_options;
void mta_dns_options(const struct conf *c, struct dns_options *o);
void mta_policy_options(const struct conf *c, struct policy_options *o);
void mta_helo_name(const struct conf *c, char *out, size_t size);

/*
 * daemon_queue.c: open the queue in queue_directory with the settings of
 * m->conf before any service starts; close it (waiting for the writer
 * thread to finish its last commit) after every service has stopped.
 */
struct queue_options;
int mta_queue_open(struct mta *m, struct buf *err);
/* The queue options the configuration asks for (also for convoyctl's
 * read-only opens; set read_only there). */
void mta_queue_options(const struct conf *c, struct queue_options *o);
void mta_queue_close(struct mta *m);

/*
 * submission.c: the SMTP listeners that accept mail into the queue.
 * submission_start() binds every smtpd_listen address (an error names the
 * address) and starts accepting. submission_stop() stops accepting new
 * connections; sessions in progress go on. submission_active() counts them.
 * submission_close() drops them all (the clients see the connection close;
 * nothing they had not been given a 250 for was accepted).
 * submission_reload() applies a new snapshot to new sessions.
 */
int submission_start(struct mta *m, struct buf *err);
void submission_stop(struct mta *m);
size_t submission_active(const struct mta *m);
void submission_close(struct mta *m);
int submission_reload(struct mta *m, struct conf *c, struct buf *err);

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
typedef int (*mta_enqueue_fn)(struct mta *m, const struct smtpd_message *msg, const char *body,
                              size_t len, void (*cb)(void *arg, int status, const char *id),
                              void *arg);
int signing_load(const struct conf *c, struct dkim_keytable **out, struct buf *err);
int signing_take(struct mta *m, struct dkim_keytable *keys, struct smtpd_session *s,
                 const struct smtpd_message *msg, mta_enqueue_fn enqueue);

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
int control_socket_path(const struct conf *c, char *out, size_t size);
/* control_queue.c: register the operator commands (queue.retry, queue.hold,
 * queue.release, queue.delete, queue.bounce, pause, resume) and the pause
 * status hook. Called by control_start(). */
void control_queue_register(void);

/*
 * ctl_client.c: convoyctl's side. Send one request, wait up to timeout_ms
 * for the answer. Returns 0 with *response set (the daemon's object, which
 * may say "ok": false), 3 when the daemon is not running, 1 on other errors
 * (printed to stderr).
 */
int ctl_request(const struct conf *c, json_t *request, json_t **response, int timeout_ms);

/*
 * convoyctl subcommands, each in its own file. argv[0] is the subcommand
 * name ("queue", "dns", ...). Return the process exit code: 0 ok, 1 failure,
 * 2 usage, 3 daemon not running.
 */
int ctl_queue(struct conf *c, int argc, char **argv);
int ctl_dns(struct conf *c, int argc, char **argv);
int ctl_sts(struct conf *c, int argc, char **argv);
int ctl_dkim(struct conf *c, int argc, char **argv);
int ctl_status(struct conf *c, int argc, char **argv);
int ctl_reload(struct conf *c, int argc, char **argv);
int ctl_pause(struct conf *c, int argc, char **argv);
int ctl_resume(struct conf *c, int argc, char **argv);

#endif
