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
};

/*
 * daemon_queue.c: open the queue in queue_directory with the settings of
 * m->conf before any service starts; close it (waiting for the writer
 * thread to finish its last commit) after every service has stopped.
 */
int mta_queue_open(struct mta *m, struct buf *err);
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
 * convoyctl subcommands, each in its own file. argv[0] is the subcommand
 * name ("queue", "dns", ...). Return the process exit code: 0 ok, 1 failure,
 * 2 usage, 3 daemon not running.
 */
int ctl_queue(struct conf *c, int argc, char **argv);
int ctl_dns(struct conf *c, int argc, char **argv);

#endif
