/*
 * ctl_proto.h - the control-socket protocol convoyd (mta/control*.c) and
 * convoyctl (ctl/) share, and nothing else: the socket's name, the bound on
 * a request line, the command names and the request and response field
 * names. Header-only (CMake target convoy_ctl_proto, an INTERFACE library),
 * so convoyctl knows the daemon's words without linking the daemon.
 *
 * Protocol (see mta/control.c for every command's fields): one JSON object
 * per line each way over the UNIX stream socket
 * <queue_directory>/CTL_SOCKET_NAME; a request {"cmd": NAME, ...}; a
 * response {"ok": true, ...} or {"ok": false, "error": TEXT}.
 *
 * convoyctl's exit codes (EXIT_OK, EXIT_FAILURE_, EXIT_USAGE,
 * EXIT_NOT_RUNNING) are base.h's, defined once there.
 */
#ifndef CONVOY_CTL_PROTO_H
#define CONVOY_CTL_PROTO_H

/* The socket's file name inside queue_directory. */
#define CTL_SOCKET_NAME "control.sock"
/* The longest request line the daemon reads (longer input closes the
 * connection with an error reply). */
#define CTL_LINE_MAX (1 << 20)

/* Commands. */
#define CTL_CMD_STATUS "status"
#define CTL_CMD_RELOAD "reload"
#define CTL_CMD_QUEUE_RETRY "queue.retry"
#define CTL_CMD_QUEUE_HOLD "queue.hold"
#define CTL_CMD_QUEUE_RELEASE "queue.release"
#define CTL_CMD_QUEUE_DELETE "queue.delete"
#define CTL_CMD_QUEUE_BOUNCE "queue.bounce"
#define CTL_CMD_PAUSE "pause"
#define CTL_CMD_RESUME "resume"

/* Fields of every request and response. */
#define CTL_F_CMD "cmd"
#define CTL_F_OK "ok"
#define CTL_F_ERROR "error"
#define CTL_F_WARNING "warning"

/* Request fields. */
#define CTL_F_IDS "ids"       /* queue.*: [ID...] */
#define CTL_F_REASON "reason" /* queue.bounce, pause; also in paused[] */
#define CTL_F_DOMAIN "domain" /* pause, resume; also in paused[] */
#define CTL_F_FOR "for"       /* pause: seconds or null */

/* Response fields. */
#define CTL_F_DONE "done"
#define CTL_F_RECIPIENTS "recipients"
#define CTL_F_MISSING "missing"
#define CTL_F_SKIPPED "skipped"
#define CTL_F_FAILED "failed"
#define CTL_F_ID "id"
#define CTL_F_UNTIL "until"
#define CTL_F_SAVED "saved"
#define CTL_F_RESUMED "resumed"
#define CTL_F_PAUSED "paused"
#define CTL_F_REMAINING "remaining"
#define CTL_F_CONFIG_FILE "config_file"

#endif
