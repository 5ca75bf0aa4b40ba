/*
 * smtp.h - public contract of the smtp module: SMTP server sessions
 * (submission) and SMTP client sessions (delivery), their parsers and
 * dot-stuffing. The module knows nothing of the queue, DNS or MTA-STS: the
 * server hands a finished message to its owner's callback and waits for the
 * answer; the client is told which TLS it must have and reports results.
 */
#ifndef CONVOY_SMTP_H
#define CONVOY_SMTP_H

#include "base.h"

/* ==== shared ========================================================== */

/*
 * Shared helpers, written by the client side and usable by the server side:
 *   smtp/reply.c  - the reply parser (multiline, enhanced status codes)
 *   smtp/stuff.c  - the DATA writer: dot-stuffing, CRLF, line folding
 * Server-side engineers: use these rather than a second copy.
 */

/* Bounds on a reply (RFC 5321 4.5.3.1.5 says 512 octets a line; real servers
 * send longer text, so accept up to 2048 a line and 64 lines). */
#define SMTP_REPLY_LINE_MAX 2048
#define SMTP_REPLY_LINES_MAX 64
#define SMTP_REPLY_TEXT_MAX 16384

/* One SMTP reply, assembled line by line (RFC 5321 4.2). */
struct smtp_reply {
    int code;        /* 200..599 once the first line is parsed */
    char status[12]; /* enhanced status "X.Y.Z" (RFC 2034, 3463) or "" */
    size_t nlines;   /* lines fed so far */
    bool done;       /* the last line (code + SP or code alone) was fed */
    struct buf text; /* each line's text after "NNN-"/"NNN ", '\n'-joined */
};

/* Prepare an empty reply. No allocation until the first line. */
void smtp_reply_init(struct smtp_reply *r);
/* Forget the contents, keep the storage (for the next reply). */
void smtp_reply_reset(struct smtp_reply *r);
void smtp_reply_free(struct smtp_reply *r);
/*
 * Feed one line without its CRLF. Returns 1 when more lines are expected,
 * 0 when the reply is complete, ERR_PROTO for a line that is not a reply
 * line (bad code, wrong separator, a code that differs from the first line),
 * ERR_TOOBIG past the bounds above. After an error the reply must be reset.
 */
int smtp_reply_feed(struct smtp_reply *r, const char *line, size_t len);
/* Append the reply as one log-friendly line: "550 5.1.1 text text ...";
 * lines are joined by a space, control characters become '?'. */
int smtp_reply_oneline(const struct smtp_reply *r, struct buf *out);
/* Is s an enhanced status code "D.D{1,3}.D{1,3}" with class 2, 4 or 5?
 * On success, the length of the code is stored in *len. */
bool smtp_status_parse(const char *s, size_t n, size_t *len);

/* DATA writer (RFC 5321 4.5.2, 4.5.3.1.6): turns message bytes into what may
 * go on the wire between DATA's 354 and the final ".". Any of CRLF, bare LF
 * and bare CR ends a line and is written as CRLF; NUL octets are dropped; a
 * line starting with '.' gets one more; a line longer than 998 octets is
 * folded by inserting CRLF SP (as Postfix's smtp_line_length_limit does), so
 * no output line is longer than 998 octets. Nothing it writes can be read as
 * an end of data or as two different messages by any next hop. */
#define SMTP_LINE_MAX 998
struct smtp_stuff {
    size_t col; /* octets written on the current output line */
    bool cr;    /* a CR was seen and its line end is not yet written */
    bool any;   /* at least one octet of content was fed */
};

void smtp_stuff_init(struct smtp_stuff *s);
/* Encode n input bytes, appending to out. The output is at most
 * 2 * n + 3 bytes. ERR_TOOBIG if out cannot hold it (out is then unchanged
 * in length only as far as buf_append guarantees: treat the session as
 * failed). */
int smtp_stuff_feed(struct smtp_stuff *s, const char *in, size_t n, struct buf *out);
/* End the message: a CRLF if the last line was not ended, then ".\r\n". */
int smtp_stuff_finish(struct smtp_stuff *s, struct buf *out);

/* ==== server side ===================================================== */

/*
 * SMTP server sessions (submission): smtp/server*.c.
 *
 * One struct smtpd holds the listeners and the sessions of one loop. A
 * session runs RFC 5321 ESMTP with PIPELINING (RFC 2920), SIZE (RFC 1870),
 * 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES (RFC 2034), SMTPUTF8 (RFC 6531),
 * DSN (RFC 3461), STARTTLS (RFC 3207), AUTH PLAIN/LOGIN over TLS only
 * (RFC 4954, 4616) and CHUNKING (RFC 3030). At the end of a message it hands
 * envelope and body to the owner's on_message callback and waits: the
 * client's 250 (or 451/452) is sent only when the owner calls
 * smtpd_session_done(). The server knows nothing of the queue.
 *
 * Threads: everything runs on the loop thread, except the crypt(3) password
 * checks, which run on the libuv thread pool. Callbacks never run before the
 * call that set them up returns.
 */

#include <sys/socket.h>
#include <uv.h>

#include "tls.h"

struct smtpd;
struct smtpd_session;
struct smtpd_credentials;

/* What to do with a bare CR or LF (RFC 5321 2.3.8) in commands and data. */
enum smtpd_bare_newline {
    SMTPD_BARE_REJECT,    /* 521 5.5.2 and disconnect (the default) */
    SMTPD_BARE_NORMALIZE, /* read as CRLF, but never as part of an end of data */
};

/* RFC 3461 NOTIFY bits; 0 means NOTIFY was not given. */
#define SMTPD_NOTIFY_NEVER 0x01u
#define SMTPD_NOTIFY_SUCCESS 0x02u
#define SMTPD_NOTIFY_FAILURE 0x04u
#define SMTPD_NOTIFY_DELAY 0x08u

/* RFC 3461 RET. */
enum smtpd_ret { SMTPD_RET_NONE = 0, SMTPD_RET_FULL = 1, SMTPD_RET_HDRS = 2 };

struct smtpd_rcpt {
    const char *addr;  /* forward-path without <> */
    unsigned notify;   /* SMTPD_NOTIFY_* */
    const char *orcpt; /* RFC 3461 ORCPT as given ("rfc822;a+40b"), "" when absent */
};

/* A finished message. Every pointer stays valid until smtpd_session_done(). */
struct smtpd_message {
    const char *sender; /* reverse-path without <>; "" is the null sender */
    const struct smtpd_rcpt *rcpts;
    size_t n_rcpts;
    enum smtpd_ret ret;
    const char *envid; /* RFC 3461 ENVID (xtext as given), "" when absent */
    bool smtputf8;     /* MAIL FROM carried SMTPUTF8 */
    bool eightbitmime; /* MAIL FROM carried BODY=8BITMIME */
    /* The client. */
    const char *client_name; /* "unknown": the server does no DNS */
    const char *client_addr; /* IP address text */
    const char *helo;
    const char *protocol;  /* as in Received: "ESMTP", "ESMTPSA", "UTF8SMTPS", ... */
    const char *tls;       /* "TLSv1.3 TLS_AES_256_GCM_SHA384", "" without TLS */
    const char *auth_user; /* "" when not authenticated */
    /* The message as it is to be stored: CRLF line ends, dot-stuffing
     * removed, lines over 998 octets folded with CRLF SP (unless
     * reject_long_lines), with Received: (and Date:, Message-ID: if they
     * were missing) prepended: those fields are the first prefix_len
     * octets. Streamed (see on_stream): body holds those fields followed
     * by the octets of the message on_stream has not been given; the
     * message is what on_stream got, then that rest. */
    struct view body;
    size_t prefix_len;
    bool streamed;
    uint64_t size; /* the whole message as stored, prefix included */
};

/*
 * The owner takes a message. It must call smtpd_session_done(s, ...) exactly
 * once, from inside this callback or later, even if the client disconnects
 * meanwhile (the session stays allocated until then).
 */
typedef void (*smtpd_message_cb)(void *arg, struct smtpd_session *s,
                                 const struct smtpd_message *msg);
/*
 * Streaming a large message (optional: on_stream NULL keeps every message
 * whole in memory). Past stream_threshold octets the session hands the
 * message over as it arrives, so memory does not grow with its size:
 *   SMTPD_STREAM_START  once: bytes is the header section with the empty
 *                       line after it (at most stream_threshold octets;
 *                       a longer one is refused with 552 5.3.4). Nothing
 *                       of the message has been handed over yet.
 *   SMTPD_STREAM_DATA   the next octets of the message as stored (the
 *                       first call starts at its first octet, header
 *                       section included).
 *   SMTPD_STREAM_ABORT  the transaction ended without on_message (a
 *                       refusal at the end, RSET, a lost connection):
 *                       forget the message. Not called once on_message
 *                       has the message (msg->streamed).
 * bytes are valid during the call only. START and DATA return 0 to go on,
 * SMTPD_STREAM_PAUSE to stop reading this session's input until the owner
 * calls smtpd_session_resume(), or a negative error: nothing more is
 * handed over and the client gets, at the end of the message, the reply
 * smtpd_session_done() gives for that error. ABORT's return is ignored.
 */
enum smtpd_stream_ev { SMTPD_STREAM_START, SMTPD_STREAM_DATA, SMTPD_STREAM_ABORT };
#define SMTPD_STREAM_PAUSE 1
typedef int (*smtpd_stream_cb)(void *arg, struct smtpd_session *s, enum smtpd_stream_ev ev,
                               struct view bytes);
/* Read on after SMTPD_STREAM_PAUSE. From any callback or later; nothing
 * happens for a session not paused. */
void smtpd_session_resume(struct smtpd_session *s);
/* One pointer the owner may keep with a session (NULL at first). */
void smtpd_session_set_data(struct smtpd_session *s, void *data);
void *smtpd_session_data(const struct smtpd_session *s);

/* May this client relay without authenticating? (mynetworks) */
typedef bool (*smtpd_relay_cb)(void *arg, const struct sockaddr *client);
/* May the client authenticated as login use sender in MAIL FROM?
 * (smtpd_sender_login_maps) Asked only of authenticated clients. */
typedef bool (*smtpd_sender_cb)(void *arg, const char *login, const char *sender);

/*
 * The owner's answer to a message: status 0 with the queue ID (the client
 * gets "250 2.0.0 Ok: queued as ID"), ERR_FULL (452 4.3.1), ERR_TOOBIG
 * (552 5.3.4), or any other error (451 4.3.0). queue_id is copied.
 */
void smtpd_session_done(struct smtpd_session *s, int status, const char *queue_id);

/*
 * Credentials for AUTH: a file of "user:hash" lines, hash in crypt(3) form
 * ("$y$..." yescrypt, "$6$..." SHA-512-crypt, ...), '#' comments and empty
 * lines ignored. Checked with crypt_rn() from libxcrypt on the thread pool;
 * no plaintext password is kept. NULL on error with one line per problem
 * (file and line number) appended to err. Reference counted: the server
 * takes its own reference; smtpd_credentials_free() drops one.
 */
struct smtpd_credentials *smtpd_credentials_load(const char *path, struct buf *err);
struct smtpd_credentials *smtpd_credentials_ref(struct smtpd_credentials *c);
void smtpd_credentials_free(struct smtpd_credentials *c);
/* Number of users in the table. */
size_t smtpd_credentials_count(const struct smtpd_credentials *c);

struct smtpd_opts {
    const char *hostname;        /* required: in the banner, replies, Received: */
    const char *banner;          /* text after "220 "; NULL: "HOSTNAME ESMTP Convoy" */
    uint64_t message_size_limit; /* SIZE, bytes; required (> 0) */
    size_t recipient_limit;      /* per message; 0: 1000 */
    unsigned hard_error_limit;   /* errors before 421 and disconnect; 0: 20 */
    size_t session_limit;        /* sessions in total; 0: 100 */
    size_t client_limit;         /* sessions per client address (not applied to
                                    clients relay_allowed() accepts); 0: 50 */
    uint32_t timeout_ms;         /* idle / per command / TLS handshake; 0: 300 s */
    uint32_t data_timeout_ms;    /* whole DATA or one BDAT chunk; 0: 600 s */
    enum smtpd_bare_newline bare_newline;
    bool reject_long_lines;          /* lines over 998 octets: 554 5.6.0; false: fold
                                        them at acceptance (CRLF SP, as Postfix) */
    unsigned hopcount_limit;         /* most Received: fields a message may carry as
                                        queued (with ours); more: 554 5.4.6; 0: 50 */
    const char *postmaster;          /* where RCPT TO:<postmaster> goes; NULL or "":
                                        "postmaster@" + the domain of hostname
                                        (hostname minus its first label when that
                                        leaves two labels or more, else hostname) */
    struct tls_ctx *tls;             /* server ctx for STARTTLS, or NULL (the server
                                        takes its own reference) */
    struct smtpd_credentials *creds; /* AUTH over TLS, or NULL for no AUTH */
    smtpd_relay_cb relay_allowed;    /* NULL: only authenticated clients relay */
    smtpd_sender_cb sender_allowed;  /* NULL: an authenticated client may use any
                                        sender; false: 553 5.7.1 at MAIL */
    smtpd_message_cb on_message;     /* required */
    smtpd_stream_cb on_stream;       /* NULL: never stream (see above) */
    size_t stream_threshold;         /* octets held before streaming; 0: 256 KiB */
    void *arg;                       /* for the callbacks */
};

/*
 * The role of a listener (RFC 6409, RFC 8314), fixed per listener:
 *  SMTPD_ROLE_SMTP         relay for relay_allowed() clients or after AUTH;
 *                          STARTTLS offered when there is a TLS context.
 *  SMTPD_ROLE_SUBMISSION   AUTH is required before MAIL from every client
 *                          (relay_allowed() grants nothing: "530 5.7.0
 *                          Authentication required"); AUTH is offered only
 *                          after STARTTLS, as everywhere.
 *  SMTPD_ROLE_SUBMISSIONS  as SUBMISSION, over TLS from the first byte
 *                          (implicit TLS): the handshake comes before the
 *                          greeting, STARTTLS is never offered. Sessions
 *                          accepted while the options have no TLS context
 *                          are closed at once.
 */
enum smtpd_role { SMTPD_ROLE_SMTP, SMTPD_ROLE_SUBMISSION, SMTPD_ROLE_SUBMISSIONS };
/* "smtp", "submission", "submissions". */
const char *smtpd_role_name(enum smtpd_role r);

/* One listening socket of a server. Owned by the server: valid until
 * smtpd_listener_close() or smtpd_free(). */
struct smtpd_listener;

/* A server on loop with the given options (strings copied). NULL on error
 * with the reason appended to err. */
struct smtpd *smtpd_new(uv_loop_t *loop, const struct smtpd_opts *opts, struct buf *err);
/* Listen on one address (IPv4 or IPv6; an IPv6 listener is IPv6-only).
 * 0 or an error with "cannot listen on ADDR: reason" appended to err. */
int smtpd_listen(struct smtpd *d, const struct sockaddr *sa, struct buf *err);
/* The same with a role; *out (out may be NULL) names the listener for the
 * calls below. On error *out is NULL. */
int smtpd_listen_role(struct smtpd *d, const struct sockaddr *sa, enum smtpd_role role,
                      struct smtpd_listener **out, struct buf *err);
/* Sessions accepted from now on get the new role; sessions in progress
 * keep theirs. */
void smtpd_listener_set_role(struct smtpd_listener *l, enum smtpd_role role);
/* Stop accepting on this listener and forget it (a reload removed it);
 * its sessions in progress go on to their end. */
void smtpd_listener_close(struct smtpd_listener *l);
/* New options for sessions accepted from now on (a reload); sessions in
 * progress keep theirs. 0 or ERR_INVAL with the reason in err. */
int smtpd_set_opts(struct smtpd *d, const struct smtpd_opts *opts, struct buf *err);
/* Stop accepting connections; sessions go on. */
void smtpd_stop_listening(struct smtpd *d);
/* Sessions not yet closed (including those waiting for smtpd_session_done). */
size_t smtpd_active(const struct smtpd *d);
/* Drop every session now: "421 4.3.2 Service shutting down" where the
 * session can take it, then close. Messages with the owner still get their
 * smtpd_session_done(). */
void smtpd_close_sessions(struct smtpd *d);
/* Stop listening, drop the sessions and free the server once every handle
 * has closed and every outstanding smtpd_session_done() has arrived (the
 * loop must run). NULL does nothing. */
void smtpd_free(struct smtpd *d);

/* ==== client side ===================================================== */

/*
 * SMTP client sessions (delivery): smtp/client.c.
 *
 * One struct smtp_client is one TCP connection to one address of one host.
 * The caller chooses the host, the address and the TLS it must have; the
 * client runs the protocol (RFC 5321, PIPELINING RFC 2920, SIZE RFC 1870,
 * STARTTLS RFC 3207, SMTPUTF8 RFC 6531, DSN RFC 3461) and reports facts and
 * per-recipient results. It never decides policy: the caller decides what a
 * result means for the queue and which host to try next.
 *
 * Events, all on the loop thread, never before smtp_client_new() returns and
 * never inside smtp_client_send():
 *   SMTP_EV_READY   greeting, EHLO and (if any) TLS done; the session is idle.
 *                   The caller calls smtp_client_send() or smtp_client_quit()
 *                   (from inside the callback or later).
 *   SMTP_EV_DONE    the message given to smtp_client_send() is finished: each
 *                   recipient's outcome is filled in. The session is idle
 *                   again if smtp_client_usable(); send the next or quit.
 *   SMTP_EV_CLOSED  the connection is closed (after QUIT, an error, or
 *                   smtp_client_abort()); smtp_client_result() says why. It is
 *                   the last event; the caller may smtp_client_free() in it.
 * A message in progress when the session fails gets its SMTP_EV_DONE (with
 * the failure as the outcome of every unfinished recipient) before
 * SMTP_EV_CLOSED. An idle session has no timer of its own: the caller quits
 * it when it no longer wants it (the server may also close it: CLOSED).
 *
 * A probe (convoyctl sts check) is a session with no message: it calls
 * smtp_client_quit() on SMTP_EV_READY and reads the facts in SMTP_EV_CLOSED
 * (smtp_client_greeting(), smtp_client_established(), smtp_client_ext(),
 * smtp_client_tls(), smtp_client_failed_stage(), smtp_client_result()).
 */

/* Stages, for timeouts, logs and "in reply to" texts. */
enum smtp_stage {
    SMTP_ST_CONNECT,
    SMTP_ST_GREETING,
    SMTP_ST_EHLO,
    SMTP_ST_HELO,
    SMTP_ST_STARTTLS,
    SMTP_ST_TLS,
    SMTP_ST_AUTH, /* SMTP AUTH (RFC 4954) after EHLO, and after TLS when any */
    SMTP_ST_IDLE,
    SMTP_ST_RSET,
    SMTP_ST_MAIL,
    SMTP_ST_RCPT,
    SMTP_ST_DATA,
    SMTP_ST_BODY,
    SMTP_ST_DOT,
    SMTP_ST_QUIT,
    SMTP_ST_CLOSING,
    SMTP_ST_CLOSED,
    SMTP_ST_COUNT
};
/* Short lower-case name of a stage ("greeting", "rcpt", ...). */
const char *smtp_stage_name(enum smtp_stage st);

/* The client's reading of an outcome, by the reply's class (RFC 5321
 * 4.2.1). It is a fact for tools that show what a server said; what an
 * outcome means for a recipient is decided by the caller from the facts
 * below (code, status, stage, err, tls_missing): delivery's verdict. */
enum smtp_action {
    SMTP_ACT_NONE = 0, /* not attempted yet: no outcome */
    SMTP_ACT_SENT,     /* the remote 250 after the final "." */
    SMTP_ACT_DEFER,    /* 4xx or connection trouble */
    SMTP_ACT_BOUNCE,   /* 5xx, or a permanent reason found before sending */
};

/* The outcome of a recipient (or of a session): separate from the mechanical
 * error codes of base.h. */
struct smtp_outcome {
    enum smtp_action action;
    enum smtp_stage stage; /* where it arose: the command a reply answered
                              (SMTP_ST_DOT: the end of DATA), or the stage
                              the session failed in (SMTP_ST_CONNECT: no
                              connection was made) */
    bool tls_missing;      /* TLS was required, but STARTTLS was not
                              offered, was refused, or no TLS context was
                              available (status 4.7.4, err ERR_TLS) */
    int code;              /* SMTP reply code, 0 when there was no reply */
    char status[12];       /* enhanced status X.Y.Z, from the reply or derived */
    int err;               /* mechanical cause (ERR_TIMEOUT, ERR_IO, ...) or 0 */
    char text[1024];       /* Postfix-shaped reason: "host h[ip] said: 550 5.1.1
                              ... (in reply to RCPT TO command)" or "250 2.0.0 Ok" */
    char reply[512];       /* the remote reply alone on one line ("550 5.1.1 ...")
                              for DSN Diagnostic-Code; "" when there was none */
};

/* TLS the caller requires of this connection. */
enum smtp_tls_mode {
    SMTP_TLS_NONE,    /* never STARTTLS */
    SMTP_TLS_MAY,     /* STARTTLS when offered, no verification; a failed
                         handshake fails the session with err ERR_TLS, and the
                         caller may retry the host with SMTP_TLS_NONE */
    SMTP_TLS_VERIFY,  /* STARTTLS must be offered and the certificate must
                         chain to a trusted root and name verify_host (RFC
                         6125); otherwise the session fails with 4.7.4 (not
                         offered) or 4.7.5 (not verified) before any MAIL */
    SMTP_TLS_ENCRYPT, /* STARTTLS must be offered and the handshake must
                         complete (Postfix's "encrypt"), but the certificate
                         is not checked (its verdict is still in the facts
                         and may be judged by tls_check); otherwise the
                         session fails with 4.7.4 (not offered or refused)
                         or 4.7.5 (handshake failed) before any MAIL, and
                         is never retried in plaintext by the client */
};

/* Per-stage timeouts in milliseconds (RFC 5321 4.5.3.2); 0 takes the RFC
 * value (connect: 30 s). */
struct smtp_timeouts {
    uint32_t connect, greeting, helo, starttls, mail, rcpt, data_init, data_block, data_done, rset,
        quit;
};

#include <uv.h>

#include "tls.h"

struct smtp_client;

/* The caller's hook to judge the TLS facts after the handshake (an MTA-STS
 * verdict, say). Return true to go on; false and fill *out to fail the
 * session before any MAIL. Optional. */
typedef bool (*smtp_tls_check_cb)(struct smtp_client *c, const struct tls_facts *tls,
                                  struct smtp_outcome *out, void *arg);

enum smtp_event { SMTP_EV_READY, SMTP_EV_DONE, SMTP_EV_CLOSED };
typedef void (*smtp_client_cb)(struct smtp_client *c, enum smtp_event ev, void *arg);

struct smtp_client_opts {
    const char *helo_name;       /* required: name in EHLO/HELO */
    const char *host;            /* required: host name for logs and SNI */
    const struct sockaddr *addr; /* required: AF_INET or AF_INET6 with port */
    enum smtp_tls_mode tls;
    const char *verify_host;     /* name the certificate must carry; NULL = host */
    struct tls_ctx *tls_ctx;     /* client ctx (the session takes a reference);
                                    NULL: no TLS available (MAY acts as NONE,
                                    VERIFY fails with 4.7.4) */
    smtp_tls_check_cb tls_check; /* optional extra judgement */
    /* SMTP AUTH (RFC 4954) to this server, told by the caller (the client
     * decides no policy): auth_user NULL or "" for none. After EHLO (and
     * STARTTLS, EHLO), when the server announces AUTH: PLAIN (RFC 4616)
     * with an initial response, else LOGIN; a server that offers neither
     * fails the session with 4.7.0; a server that announces no AUTH gets
     * none (Postfix's behaviour) and the session goes on. With
     * auth_tls_required, a session without TLS fails with 4.7.0 (err
     * ERR_PERM, stage SMTP_ST_AUTH) and the password is never sent. A
     * refusal (535 ...) fails the session at stage SMTP_ST_AUTH with the
     * server's reply. The strings are copied (the password is wiped when
     * the session is freed) and never logged. */
    const char *auth_user;
    const char *auth_password;
    bool auth_tls_required;
    struct smtp_timeouts timeouts;
    smtp_client_cb cb;
    void *arg;
};

/* A recipient of a message: the address and optional DSN parameters
 * (sent only when the server offers DSN); out is filled by the client. */
struct smtp_rcpt {
    const char *addr;   /* without angle brackets */
    const char *notify; /* RFC 3461 NOTIFY value or NULL */
    const char *orcpt;  /* RFC 3461 ORCPT value (xtext) or NULL */
    struct smtp_outcome out;
};

/* A message: the caller owns every pointer until SMTP_EV_DONE. */
struct smtp_msg {
    const char *sender; /* "" for the null sender */
    struct view body;   /* header + body; line ends CRLF or LF */
    /* Or, instead of body: the content read in pieces as it is sent (from
     * the queue, say), so no message is held in memory whole. read copies
     * up to cap bytes from offset into dst and sets *got (> 0 before size
     * is reached); an error or a short read drops the connection without
     * the final dot, and the recipients are deferred. size is the content
     * length. Called on the loop thread, never after SMTP_EV_DONE. */
    int (*read)(void *arg, uint64_t offset, void *dst, size_t cap, size_t *got);
    void *read_arg;
    uint64_t size;
    bool smtputf8;     /* needs SMTPUTF8 (RFC 6531): 5.6.7 if not offered */
    bool eightbit;     /* BODY=8BITMIME when offered */
    const char *ret;   /* RFC 3461 RET value or NULL */
    const char *envid; /* RFC 3461 ENVID value (xtext) or NULL */
    size_t nrcpt;
    struct smtp_rcpt *rcpt;
    bool attempted;      /* set by the client: MAIL FROM was sent */
    uint64_t wire_bytes; /* set by the client: body octets written */
};

/* Extensions the server announced in its last EHLO answer. */
struct smtp_ext {
    bool esmtp, pipelining, starttls, smtputf8, eightbitmime, dsn, enhanced, chunking;
    bool auth, auth_plain, auth_login; /* AUTH (RFC 4954) and its mechanisms */
    uint64_t size;                     /* SIZE limit, 0 = none announced */
};

/*
 * Start a session: connect to opts->addr. The strings in opts are copied.
 * Returns NULL only on allocation failure or invalid options (*err says
 * which); otherwise every outcome, including a failed connect, arrives as
 * events.
 */
struct smtp_client *smtp_client_new(uv_loop_t *loop, const struct smtp_client_opts *opts, int *err);
/* Send a message on an idle session (after SMTP_EV_READY or SMTP_EV_DONE).
 * ERR_INVAL if not idle; otherwise SMTP_EV_DONE follows. A session that has
 * carried a message sends RSET first; if the RSET fails the message is
 * reported with attempted == false so the caller may use another session. */
int smtp_client_send(struct smtp_client *c, struct smtp_msg *msg);
/* Say QUIT politely and close; SMTP_EV_CLOSED follows. On a session that is
 * not idle this is smtp_client_abort(). */
void smtp_client_quit(struct smtp_client *c);
/* Close now without QUIT. An unfinished message gets SMTP_EV_DONE with a
 * deferral before this returns; SMTP_EV_CLOSED follows from the loop. */
void smtp_client_abort(struct smtp_client *c);
/* Free a closed session (in or after SMTP_EV_CLOSED). NULL does nothing. A
 * session that is not closed yet is aborted and freed once it is. */
void smtp_client_free(struct smtp_client *c);

/* Facts of the session. */
bool smtp_client_usable(const struct smtp_client *c); /* idle and may take a message */
enum smtp_stage smtp_client_stage(const struct smtp_client *c);
const struct smtp_ext *smtp_client_ext(const struct smtp_client *c);
/* The TLS facts (tls/tls.h) once STARTTLS was tried, else NULL. */
const struct tls_facts *smtp_client_tls(const struct smtp_client *c);
/* The server's certificate chain as received (leaf first), for DANE
 * (tls_conn_peer_chain()): at most max entries, valid until the client is
 * freed; 0 without a TLS session or certificate. */
size_t smtp_client_peer_chain(const struct smtp_client *c, struct tls_der *out, size_t max);
/* Why the session closed (valid in SMTP_EV_CLOSED); action SENT when it ended
 * with a normal QUIT. */
const struct smtp_outcome *smtp_client_result(const struct smtp_client *c);
/* "host[ip]:port", for log lines. */
const char *smtp_client_relay(const struct smtp_client *c);
const char *smtp_client_ip(const struct smtp_client *c);
/* Our address of the connection ("" before it is connected). */
const char *smtp_client_local_ip(const struct smtp_client *c);
/* Did the session get a greeting and a successful EHLO/HELO? (The caller
 * uses this to tell a dead address from a live host.) */
bool smtp_client_established(const struct smtp_client *c);
/* The stage the session was in when it failed (meaningful in SMTP_EV_CLOSED
 * when smtp_client_result() is not SENT): SMTP_ST_TLS for a handshake that
 * failed, SMTP_ST_STARTTLS for a refused STARTTLS, SMTP_ST_EHLO when TLS was
 * required and not offered, ... */
enum smtp_stage smtp_client_failed_stage(const struct smtp_client *c);
/* The server's 2xx greeting on one line ("220 mx.example ESMTP"); "" until
 * one came. */
const char *smtp_client_greeting(const struct smtp_client *c);
/* Did the session log in with SMTP AUTH (235)? */
bool smtp_client_authenticated(const struct smtp_client *c);
/* How many messages this session has carried (SMTP_EV_DONE seen). */
unsigned smtp_client_messages(const struct smtp_client *c);

#endif
