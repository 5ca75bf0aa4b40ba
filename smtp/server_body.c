/*
 * server_body.c - the message part of an SMTP server session: DATA and
 * BDAT, the checks at the end of the message (size, bare line ends, NULs,
 * long lines, hop count), Received: and the other fields added at the
 * front, streaming large messages to the owner, and the handoff to the
 * owner with its answer.
 *
 * Standards: RFC 5321 4.1.1.4 (DATA), 4.4 (Received:), 4.5.2 (dot
 * transparency), 6.3 (loops: hop count); RFC 3030 (BDAT); RFC 1870 (SIZE);
 * RFC 5322 3.6 (Date:, Message-ID:).
 *
 * Streaming (opts.on_stream): a message stays in memory up to
 * stream_threshold octets (the fast path). Past it, the header section is
 * handed over once (SMTPD_STREAM_START), then the stored octets as they
 * arrive (SMTPD_STREAM_DATA), each time emptying the buffer; memory per
 * session stays at about the threshold plus one read. The owner may ask
 * for a pause (reading stops until smtpd_session_resume()). A transaction
 * that ends without on_message (a reject, RSET, a lost connection) gets
 * SMTPD_STREAM_ABORT. The checks at the end (the reply the client gets)
 * are the same as for a message held whole.
 *
 * Invariants:
 *  - The client's 250 comes only from smtpd_session_done() with status 0.
 *  - The header section of a streamed message is whole in memory when it
 *    is handed over: a header section longer than stream_threshold is
 *    refused (552 5.3.4) rather than streamed without it.
 */
#include "server_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Most octets fed to the DATA reader at once, so a buffer over the
 * threshold is emptied before it grows by more than this. */
#define BODY_SLICE (64 * 1024)

static void begin_body(struct smtpd_session *s, bool bdat, bool prev_crlf)
{
    static const char zeros[HDR_RESERVE];
    buf_free(&s->body);
    buf_init(&s->body, HDR_RESERVE + s->cfg->o.message_size_limit + SMTP_TEXT_LINE_MAX + 2);
    int rc = buf_append(&s->body, zeros, HDR_RESERVE);
    smtp_data_init(&s->data,
                   s->cfg->o.bare_newline == SMTPD_BARE_NORMALIZE ? SMTP_BARE_NORMALIZE
                                                                  : SMTP_BARE_REJECT,
                   bdat, s->cfg->o.message_size_limit, prev_crlf, &s->body);
    s->data.fold = !s->cfg->o.reject_long_lines;
    if (rc)
        s->data.flags |= SMTP_DATA_NOMEM;
    s->data_deadline = time_mono_ms() + s->cfg->o.data_timeout_ms;
    s->streaming = false;
    s->stream_paused = false;
    s->stream_err = 0;
}

/* ---- streaming ------------------------------------------------------------ */

static size_t stream_threshold(const struct smtpd_session *s)
{
    return s->cfg->o.stream_threshold ? s->cfg->o.stream_threshold : DEF_STREAM_THRESHOLD;
}

/* The owner could not take the message: store nothing more, and answer
 * with its error at the end. */
static void stream_fail(struct smtpd_session *s, int err)
{
    s->stream_err = err;
    s->data.flags |= SMTP_DATA_NOMEM; /* stops storing; the reply is the owner's */
    s->body.len = HDR_RESERVE;
}

static int stream_call(struct smtpd_session *s, enum smtpd_stream_ev ev, const char *p, size_t n)
{
    return s->cfg->o.on_stream(s->cfg->o.arg, s, ev, (struct view){p, n});
}

/* Hand what the buffer holds to the owner once it is over the threshold. */
static void stream_pump(struct smtpd_session *s)
{
    size_t held = s->body.len - HDR_RESERVE;
    if (!s->cfg->o.on_stream || s->data.flags || held < stream_threshold(s))
        return;
    const char *msg = s->body.data + HDR_RESERVE;
    if (!s->streaming) {
        if (s->data.in_headers || s->data.head_len > stream_threshold(s)) {
            /* The header section must be whole for what the owner does
             * with it (DKIM, TLS-Required:); RFC 5322 sets no limit, so
             * this one is ours. */
            s->data.flags |= SMTP_DATA_HEADER_TOO_BIG;
            s->body.len = HDR_RESERVE;
            return;
        }
        s->streaming = true;
        int rc = stream_call(s, SMTPD_STREAM_START, msg, (size_t)s->data.head_len);
        if (rc < 0) {
            stream_fail(s, rc);
            return;
        }
    }
    int rc = stream_call(s, SMTPD_STREAM_DATA, msg, held);
    s->body.len = HDR_RESERVE;
    if (rc < 0)
        stream_fail(s, rc);
    else if (rc == SMTPD_STREAM_PAUSE)
        s->stream_paused = true;
}

void smtpd_body_reset(struct smtpd_session *s)
{
    if (s->streaming) {
        s->streaming = false;
        s->stream_paused = false;
        stream_call(s, SMTPD_STREAM_ABORT, NULL, 0);
    }
    buf_free(&s->body);
}

void smtpd_session_resume(struct smtpd_session *s)
{
    if (!s || !s->stream_paused)
        return;
    s->stream_paused = false;
    if (!s->in_process && !s->closing)
        smtpd_process(s);
}

void smtpd_session_set_data(struct smtpd_session *s, void *data)
{
    s->owner_data = data;
}

void *smtpd_session_data(const struct smtpd_session *s)
{
    return s->owner_data;
}

static void make_proto(struct smtpd_session *s)
{
    const char *base = s->mail.smtputf8 ? "UTF8SMTP" : s->esmtp ? "ESMTP" : "SMTP";
    snprintf(s->proto, sizeof(s->proto), "%s%s%s", base, s->tls_active ? "S" : "",
             s->auth_user[0] ? "A" : "");
}

/* Put Received: (and Date:, Message-ID: when missing) in front of the body
 * and fill s->msg. */
static int build_message(struct smtpd_session *s)
{
    struct buf h;
    buf_init(&h, HDR_RESERVE);
    char date[64];
    time_t now = time(NULL);
    time_format_rfc5322(now, date, sizeof(date));
    make_proto(s);
    int rc = buf_printf(&h, "Received: from %s (%s [%s])\r\n", s->helo[0] ? s->helo : "unknown",
                        smtpd_client_name(s), s->addr);
    if (!rc && s->tls_active)
        rc = buf_printf(&h, "\t(using %s with cipher %s)\r\n", s->tls_version, s->tls_cipher);
    if (!rc)
        rc = buf_printf(&h, "\tby %s (Convoy) with %s", s->cfg->hostname, s->proto);
    /* As Postfix: name the recipient only when there is one, for privacy. */
    if (!rc && s->n_rcpts == 1)
        rc = buf_printf(&h, "\r\n\tfor <%s>", s->rcpts[0].addr);
    if (!rc)
        rc = buf_printf(&h, "; %s\r\n", date);
    if (!rc && !s->data.seen_date)
        rc = buf_printf(&h, "Date: %s\r\n", date);
    if (!rc && !s->data.seen_msgid) {
        /* Unique without a system call per message: distinct numbers of
         * one sequence within the process, a random start per process. */
        uint64_t r = splitmix64(&s->d->msgid_seq);
        char stamp[32];
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(stamp, sizeof(stamp), "%Y%m%d%H%M%S", &tm);
        rc = buf_printf(&h, "Message-ID: <%s.%016llx@%s>\r\n", stamp, (unsigned long long)r,
                        s->cfg->hostname);
    }
    if (rc) {
        buf_free(&h);
        return rc;
    }
    char *start = s->body.data + HDR_RESERVE - h.len;
    memcpy(start, h.data, h.len);
    struct smtpd_message *m = &s->msg;
    memset(m, 0, sizeof(*m));
    m->sender = s->mail.addr;
    m->rcpts = s->rcpts;
    m->n_rcpts = s->n_rcpts;
    m->ret = s->mail.ret == SMTP_PARSE_RET_FULL   ? SMTPD_RET_FULL
             : s->mail.ret == SMTP_PARSE_RET_HDRS ? SMTPD_RET_HDRS
                                                  : SMTPD_RET_NONE;
    m->envid = s->mail.envid;
    m->smtputf8 = s->mail.smtputf8;
    m->eightbitmime = s->mail.body == SMTP_BODY_8BITMIME;
    m->client_name = smtpd_client_name(s);
    m->client_addr = s->addr;
    m->helo = s->helo;
    m->protocol = s->proto;
    m->tls = s->tls_active ? s->tls_desc : "";
    m->auth_user = s->auth_user;
    m->body = (struct view){start, s->body.len - HDR_RESERVE + h.len};
    m->prefix_len = h.len;
    m->streamed = s->streaming;
    m->size = h.len + s->data.size;
    buf_free(&h);
    return 0;
}

/* The reply for an owner's error (smtpd_session_done()). */
static const char *owner_error_reply(int st)
{
    if (st == ERR_FULL)
        return "452 4.3.1 Insufficient system storage";
    if (st == ERR_TOOBIG)
        return "552 5.3.4 Message size exceeds fixed limit";
    return "451 4.3.0 Error: queue file write error";
}

static void owner_finish(struct smtpd_session *s)
{
    s->owner_pending = false;
    s->holds--;
    if (s->closing) {
        smtpd_session_maybe_free(s);
        return;
    }
    int st = s->owner_status;
    if (st == 0) {
        log_info("smtpd", "%s: client=%s[%s]%s%s%s%s", s->qid, smtpd_client_name(s), s->addr,
                 s->auth_user[0] ? ", sasl_method=" : "",
                 s->auth_user[0] ? (s->auth_method ? s->auth_method : "") : "",
                 s->auth_user[0] ? ", sasl_username=" : "", s->auth_user);
        log_info("smtpd", "%s: from=<%s>, size=%llu, nrcpt=%zu (queue active)", s->qid,
                 s->mail.addr, (unsigned long long)s->msg.size, s->n_rcpts);
        smtpd_reply(s, "250 2.0.0 Ok: queued as %s", s->qid);
    } else {
        log_warn("smtpd", "NOQUEUE: %s[%s]: message from=<%s> not queued: %s", smtpd_client_name(s),
                 s->addr, s->mail.addr, err_str(st));
        smtpd_reply(s, "%s", owner_error_reply(st));
    }
    if (st == 0)
        s->cnt_ok[s->last_verb]++, s->commands_ok++;
    smtpd_transaction_reset(s);
    smtpd_set_state(s, smtpd_idle_state(s));
    if (!s->in_process)
        smtpd_process(s);
}

void smtpd_session_done(struct smtpd_session *s, int status, const char *queue_id)
{
    if (!s || !s->owner_pending || s->owner_answered)
        return;
    s->owner_answered = true;
    s->owner_status = status;
    str_copy(s->qid, status == 0 && queue_id ? queue_id : "NOQUEUE", sizeof(s->qid));
    if (s->in_owner_cb)
        return; /* finished when the callback returns */
    owner_finish(s);
}

/* The end of a message (DATA's dot or BDAT LAST). */
/* Refuse the message at its end: the transaction is over. */
static bool refuse(struct smtpd_session *s, const char *verb, const char *text, bool log)
{
    if (log)
        smtpd_log_reject(s, verb, text, NULL);
    smtpd_reply(s, "%s", text);
    smtpd_transaction_reset(s);
    smtpd_set_state(s, smtpd_idle_state(s));
    return false;
}

static bool message_complete(struct smtpd_session *s)
{
    const char *verb = s->data.bdat ? "BDAT" : "DATA";
    if (s->stream_err) {
        log_warn("smtpd", "NOQUEUE: %s[%s]: message from=<%s> not queued: %s", smtpd_client_name(s),
                 s->addr, s->mail.addr, err_str(s->stream_err));
        return refuse(s, verb, owner_error_reply(s->stream_err), false);
    }
    const char *rej = smtp_data_reject_reply(&s->data);
    if (rej)
        return refuse(s, verb, rej, true);
    /* A mail loop (RFC 5321 6.3): refuse a message that would leave here
     * with more than hopcount_limit Received: fields (ours included), so it
     * is never relayed onward. */
    if (s->data.received >= s->cfg->o.hopcount_limit)
        return refuse(s, verb, "554 5.4.6 Too many hops", true);
    if (build_message(s) != 0)
        return refuse(s, verb, "451 4.3.0 Error: insufficient memory", false);
    /* From here the owner has the message: it aborts what it stored if it
     * cannot keep it. */
    s->streaming = false;
    s->bdat_active = false;
    s->owner_pending = true;
    s->owner_answered = false;
    s->holds++;
    smtpd_set_state(s, SS_WAIT);
    /* Send earlier pipelined replies now; the 250 comes with the owner. */
    smtpd_flush(s);
    s->in_owner_cb = true;
    s->cfg->o.on_message(s->cfg->o.arg, s, &s->msg);
    s->in_owner_cb = false;
    if (s->owner_answered)
        owner_finish(s);
    return true;
}

/* DATA or BDAT: is a message body allowed now? NULL or the reply. */
static const char *body_refusal(const struct smtpd_session *s)
{
    if (s->state == SS_RCPT)
        return NULL;
    if (s->state == SS_MAIL && s->rcpt_tried > 0)
        return "554 5.5.1 Error: no valid recipients";
    if (!s->helo_seen)
        return "503 5.5.1 Error: send HELO/EHLO first";
    if (s->state == SS_MAIL)
        return "503 5.5.1 Error: need RCPT command";
    return "503 5.5.1 Error: need MAIL command";
}

bool smtpd_cmd_data(struct smtpd_session *s, struct view arg, enum smtp_eol eol)
{
    if (arg.len) {
        smtpd_reply(s, "501 5.5.4 Syntax: DATA");
        return false;
    }
    const char *no = body_refusal(s);
    if (no) {
        smtpd_reply(s, "%s", no);
        return false;
    }
    if (s->bdat_active) {
        smtpd_reply(s, "503 5.5.1 Error: DATA after BDAT");
        return false;
    }
    begin_body(s, false, eol == SMTP_EOL_CRLF);
    smtpd_set_state(s, SS_DATA);
    smtpd_reply(s, "354 End data with <CR><LF>.<CR><LF>");
    return true;
}

static void bdat_chunk_done(struct smtpd_session *s);

bool smtpd_cmd_bdat(struct smtpd_session *s, struct view arg)
{
    uint64_t size;
    bool last;
    if (smtp_parse_bdat(arg, &size, &last) != 0) {
        /* Without a size the chunk cannot be skipped: whatever follows
         * could be read as commands. Refuse and disconnect. */
        smtpd_reply_close(s, "501 5.5.4 Syntax: BDAT count [LAST]; closing connection");
        return false;
    }
    const char *no = body_refusal(s);
    s->bdat_discard = no != NULL;
    s->bdat_reply = no;
    s->bdat_left = size;
    s->bdat_last = last;
    s->resume = s->state;
    if (!no && !s->bdat_active) {
        begin_body(s, true, true);
        s->bdat_active = true;
    }
    if (s->bdat_discard)
        s->data_deadline = time_mono_ms() + s->cfg->o.data_timeout_ms;
    smtpd_set_state(s, SS_BDAT);
    if (size == 0)
        bdat_chunk_done(s);
    return !no;
}

static void bdat_chunk_done(struct smtpd_session *s)
{
    if (s->bdat_discard) {
        smtpd_reply(s, "%s", s->bdat_reply);
        smtpd_set_state(s, s->resume);
        return;
    }
    if (s->bdat_last) {
        if (smtp_data_finish(&s->data) != 0) {
            smtpd_bare_newline_abort(s, false);
            return;
        }
        message_complete(s);
        return;
    }
    const char *rej =
        s->stream_err ? owner_error_reply(s->stream_err) : smtp_data_reject_reply(&s->data);
    if (rej) {
        /* RFC 3030 2: after a failed chunk the transaction is over; later
         * chunks are refused until a new MAIL. */
        smtpd_log_reject(s, "BDAT", rej, NULL);
        smtpd_reply(s, "%s", rej);
        smtpd_transaction_reset(s);
        smtpd_set_state(s, smtpd_idle_state(s));
        return;
    }
    smtpd_reply(s, "250 2.0.0 Ok: %llu octets received", (unsigned long long)s->data.size);
    s->cnt_ok[SMTP_V_BDAT]++;
    s->commands_ok++;
    smtpd_set_state(s, SS_RCPT);
}

long smtpd_body_feed(struct smtpd_session *s, const char *p, size_t n)
{
    if (s->stream_paused)
        return -1; /* smtpd_session_resume() goes on */
    if (n > BODY_SLICE)
        n = BODY_SLICE;
    if (s->state == SS_DATA) {
        long k = smtp_data_feed(&s->data, p, n);
        if (k < 0) {
            smtpd_bare_newline_abort(s, (s->data.flags & SMTP_DATA_BARE_LF) != 0);
            return -1;
        }
        if (s->data.done)
            message_complete(s); /* counted in owner_finish() */
        else
            stream_pump(s);
        return k;
    }
    size_t k = n < s->bdat_left ? n : (size_t)s->bdat_left;
    if (!s->bdat_discard) {
        long used = smtp_data_feed(&s->data, p, k);
        if (used < 0) {
            smtpd_bare_newline_abort(s, (s->data.flags & SMTP_DATA_BARE_LF) != 0);
            return -1;
        }
        stream_pump(s);
    }
    s->bdat_left -= k;
    if (s->bdat_left == 0)
        bdat_chunk_done(s);
    return (long)k;
}
