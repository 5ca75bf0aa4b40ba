/*
 * server_int.h - declarations shared by the SMTP server's source files and
 * nobody else: server.c (listeners, sessions, commands), server_body.c
 * (DATA, BDAT and the handoff of the message), server_auth.c (password
 * checks).
 */
#ifndef CONVOY_SMTP_SERVER_INT_H
#define CONVOY_SMTP_SERVER_INT_H

#include <sys/socket.h>

#include "server_parse.h"
#include "smtp.h"

#define READ_CHUNK TLS_STREAM_READ_CHUNK
/* Room left in front of the message for Received:, Date: and Message-ID:. */
#define HDR_RESERVE 4096
/* A message held in memory before it is streamed (opts.on_stream). */
#define DEF_STREAM_THRESHOLD (256 * 1024)

/* The answer of a password check: runs on the loop thread. */
typedef void (*smtpd_auth_cb)(void *arg, bool ok);

/* Check user/password against c on the thread pool; cb runs later on the
 * loop thread exactly once, unless this returns an error. */
int smtpd_auth_check(uv_loop_t *loop, const struct smtpd_credentials *c, const char *user,
                     const char *password, smtpd_auth_cb cb, void *arg);

/* ---- configuration snapshots and sessions (server.c) ---------------------- */

struct smtpd_cfg {
    int refs;
    struct smtpd_opts o; /* strings point at the copies below */
    char *hostname;
    char *banner;
    char *postmaster;
};

struct smtpd_listener {
    uv_tcp_t tcp;
    struct smtpd *d;
    struct smtpd_listener *next;
    enum smtpd_role role;
    char name[80];
};

struct smtpd {
    uv_loop_t *loop;
    struct smtpd_cfg *cfg;
    struct smtpd_listener *listeners;
    size_t listeners_open; /* listener handles not yet closed */
    struct smtpd_session *sessions;
    size_t n_sessions; /* in the list: from accept until freed */
    bool freeing;
    uint64_t msgid_seq; /* Message-IDs made here: seeded once, see build_message() */
};

/* Session states. Transaction progress (MAIL, RCPT) is part of the state so
 * "command out of sequence" is a property of the state alone. */
enum sstate {
    SS_CONNECTED, /* greeting sent; HELO/EHLO not yet (or forgotten by STARTTLS) */
    SS_READY,     /* HELO/EHLO done, no transaction */
    SS_MAIL,      /* MAIL accepted, no recipient yet */
    SS_RCPT,      /* at least one recipient */
    SS_DATA,      /* reading DATA up to CRLF.CRLF */
    SS_BDAT,      /* reading a BDAT chunk */
    SS_AUTH,      /* waiting for a SASL response line */
    SS_TLS,       /* TLS handshake after STARTTLS */
    SS_WAIT,      /* waiting for the owner or a password check */
    SS_CLOSING,   /* last reply going out */
    SS_COUNT
};

enum auth_step { AUTH_NONE, AUTH_PLAIN, AUTH_LOGIN_USER, AUTH_LOGIN_PASS };

struct smtpd_session {
    struct smtpd *d;
    struct smtpd_cfg *cfg;
    struct smtpd_session *prev, *next;

    struct tls_stream *stream; /* the connection; NULL once it has closed */
    uv_timer_t timer;
    int handles_open; /* the timer and the stream */
    bool closing;     /* close started */
    bool hard_closed; /* the stream and the timer are being closed */
    int holds;        /* the owner or a password check still refers to us */
    enum sstate state;
    enum sstate resume; /* the state to go back to after SS_WAIT / SS_BDAT / SS_AUTH */

    struct sockaddr_storage peer;
    char addr[INET6_ADDRSTRLEN];
    enum smtpd_role role; /* of the listener, when the session was accepted */
    bool implicit_tls;    /* SMTPD_ROLE_SUBMISSIONS: greet after the handshake */
    char helo[256];
    bool helo_seen;
    bool esmtp;

    /* TLS */
    bool tls_started;  /* STARTTLS accepted: the stream speaks TLS */
    bool tls_active;   /* the handshake completed */
    char tls_desc[96]; /* "TLSv1.3 TLS_AES_128_GCM_SHA256" */
    char tls_version[16];
    char tls_cipher[64];

    /* AUTH */
    enum auth_step auth_step;
    char auth_user[256];
    char auth_try_user[256];
    const char *auth_method;

    /* the transaction */
    struct smtp_mail_args mail;
    struct smtpd_rcpt *rcpts;
    size_t n_rcpts, cap_rcpts;
    size_t rcpt_tried;
    bool bdat_active;
    bool bdat_last;
    bool bdat_discard;
    const char *bdat_reply;
    uint64_t bdat_left;
    struct buf body; /* HDR_RESERVE octets, then the message (or, streaming,
                        what the owner has not taken yet) */
    struct smtp_data data;
    bool streaming;     /* the owner took part of this message (on_stream) */
    bool stream_paused; /* the owner asked to read no more until resume */
    int stream_err;     /* the owner could not take more: refuse at the end */
    void *owner_data;   /* smtpd_session_set_data() */
    int64_t data_deadline;
    bool timer_is_deadline; /* the armed timer is the data deadline */

    /* the owner */
    bool owner_pending;
    bool in_owner_cb;
    bool owner_answered;
    int owner_status;
    char qid[64];
    struct smtpd_message msg;
    char proto[16];

    /* input and output */
    struct buf in;
    size_t in_off;
    struct smtp_lines lines;
    char cmdline[SMTP_CMD_LINE_MAX];
    struct buf out; /* replies not yet handed to the stream */

    /* counters for the disconnect line, as Postfix logs them */
    unsigned errors;
    unsigned commands, commands_ok;
    unsigned cnt_all[SMTP_V_COUNT], cnt_ok[SMTP_V_COUNT];
    enum smtp_verb last_verb;
    bool quit;
    bool in_process; /* smtpd_process() is on the stack: do not re-enter it */
};

/* server.c */
void smtpd_reply(struct smtpd_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Reply and close: for 421 and 521. */
void smtpd_reply_close(struct smtpd_session *s, const char *text);
/* The only writer of s->state; re-arms the session's timer. */
void smtpd_set_state(struct smtpd_session *s, enum sstate st);
/* The state for "no transaction" in this session. */
enum sstate smtpd_idle_state(const struct smtpd_session *s);
/* Forget MAIL, RCPT and the message (a streamed one is aborted). */
void smtpd_transaction_reset(struct smtpd_session *s);
void smtpd_flush(struct smtpd_session *s);
/* Run the state machine over the input held (not re-entrant: see
 * in_process). */
void smtpd_process(struct smtpd_session *s);
void smtpd_update_reading(struct smtpd_session *s);
void smtpd_session_close(struct smtpd_session *s, bool graceful);
void smtpd_session_maybe_free(struct smtpd_session *s);
const char *smtpd_client_name(const struct smtpd_session *s);
/* The NOQUEUE log line of a refused command or message. */
void smtpd_log_reject(struct smtpd_session *s, const char *verb, const char *text, const char *to);
/* A bare CR or LF in reject mode: answer and disconnect. */
void smtpd_bare_newline_abort(struct smtpd_session *s, bool lf);

/* server_body.c */
bool smtpd_cmd_data(struct smtpd_session *s, struct view arg, enum smtp_eol eol);
bool smtpd_cmd_bdat(struct smtpd_session *s, struct view arg);
/* Feed message octets in SS_DATA or SS_BDAT: the number used, or -1 when
 * the session cannot go on reading now (closed, or paused by the owner). */
long smtpd_body_feed(struct smtpd_session *s, const char *p, size_t n);
/* The transaction ends without a message: tell an owner that took part
 * of it (on_stream) and free the buffer. */
void smtpd_body_reset(struct smtpd_session *s);

#endif
