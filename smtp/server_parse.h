/*
 * server_parse.h - the SMTP server's parsers, private to the smtp module
 * (and to its unit tests and fuzz drivers): command lines, paths and
 * addresses, ESMTP parameters of MAIL and RCPT, xtext, base64, and the
 * byte-level readers for command lines and message data.
 *
 * Standards: RFC 5321 4.1.1-4.1.2 (commands, path syntax), 4.5.2 (dot
 * transparency), 4.5.3.1 (size limits); RFC 1870 (SIZE); RFC 6152
 * (8BITMIME); RFC 6531 (SMTPUTF8); RFC 3461 4.1-4.4 (DSN parameters and
 * xtext); RFC 3030 (BDAT); RFC 4954 (AUTH=); RFC 4648 4 (base64).
 *
 * Invariants:
 *  - Every parser is a function of its input alone: no allocation, no I/O,
 *    fixed-size outputs, bounded work per input byte. Some replies are
 *    composed in a static buffer, so the parsers run on the loop thread only.
 *  - A reject is reported as a complete reply line ("501 5.1.7 ...") so the
 *    rule and its wording live in one place.
 *  - The readers never treat anything but <CR><LF>.<CR><LF> as the end of
 *    DATA, whatever the bare-newline mode.
 */
#ifndef CONVOY_SMTP_SERVER_PARSE_H
#define CONVOY_SMTP_SERVER_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

/* RFC 5321 4.5.3.1 */
#define SMTP_LOCAL_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 256 /* including the angle brackets */
/* RFC 5321 4.5.3.1.6: 1000 octets including CRLF. */
#define SMTP_TEXT_LINE_MAX 998
/* Command lines: RFC 5321 says 512 with CRLF; RFC 4954 4 lets AUTH lines
 * reach 12288 octets. We allow 4096 octets for everything (as Postfix allows
 * 2048 for commands), which holds any sane AUTH PLAIN response. */
#define SMTP_CMD_LINE_MAX 4096
#define SMTP_ENVID_MAX 100 /* RFC 3461 4.4 */
#define SMTP_ORCPT_MAX 500 /* RFC 3461 4.2 */

enum smtp_verb {
    SMTP_V_UNKNOWN,
    SMTP_V_EHLO,
    SMTP_V_HELO,
    SMTP_V_MAIL,
    SMTP_V_RCPT,
    SMTP_V_DATA,
    SMTP_V_BDAT,
    SMTP_V_RSET,
    SMTP_V_NOOP,
    SMTP_V_QUIT,
    SMTP_V_VRFY,
    SMTP_V_EXPN,
    SMTP_V_HELP,
    SMTP_V_STARTTLS,
    SMTP_V_AUTH,
    SMTP_V_COUNT
};

/* Upper-case verb name ("EHLO"), or "UNKNOWN". */
const char *smtp_verb_name(enum smtp_verb v);

struct smtp_cmd {
    enum smtp_verb verb;
    struct view arg; /* the text after the verb and its space; may be empty */
};

/*
 * Split a command line (without its line ending) into verb and argument.
 * Verbs are case-insensitive (RFC 5321 2.4). Returns 0, or ERR_PROTO when the
 * line holds a NUL or another control character except TAB, with *why set to
 * the reply. An unknown verb is not an error: verb is SMTP_V_UNKNOWN.
 */
int smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *out, const char **why);

/* Is [p, p+n) well-formed UTF-8 without overlongs or surrogates? */
bool smtp_utf8_valid(const unsigned char *p, size_t n);

/*
 * Check a mailbox ("local@domain") against RFC 5321 4.1.2 (with the
 * RFC 6531 3.3 UTF-8 extension when utf8 is true): dot-string or
 * quoted-string local part of at most 64 octets, a domain of LDH labels (or
 * U-labels with utf8) of at most 255 octets, or an address literal.
 * Returns 0, or ERR_INVAL with *why set to a reply text (without the code,
 * e.g. "5.1.3 Local part longer than 64 octets").
 */
int smtp_mailbox_check(const char *p, size_t n, bool utf8, const char **why);

/* Does the mailbox or domain hold any octet >= 0x80? */
bool smtp_has_8bit(const char *p, size_t n);

/* RFC 3461 4: is v valid xtext? */
bool smtp_xtext_valid(const char *p, size_t n);

/* DSN NOTIFY bits (RFC 3461 4.1). 0 means the parameter was absent. */
enum {
    SMTP_NOTIFY_NEVER = 1 << 0,
    SMTP_NOTIFY_SUCCESS = 1 << 1,
    SMTP_NOTIFY_FAILURE = 1 << 2,
    SMTP_NOTIFY_DELAY = 1 << 3,
};

/* DSN RET (RFC 3461 4.3). */
enum smtp_dsn_ret_parse { SMTP_PARSE_RET_NONE, SMTP_PARSE_RET_FULL, SMTP_PARSE_RET_HDRS };

enum smtp_body_type { SMTP_BODY_NONE, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };

struct smtp_mail_args {
    char addr[SMTP_PATH_MAX + 1]; /* the mailbox without <>; "" for the null sender */
    bool has_size;
    uint64_t size;
    enum smtp_body_type body;
    bool smtputf8;
    enum smtp_dsn_ret_parse ret;
    char envid[SMTP_ENVID_MAX + 1]; /* xtext as received; "" when absent */
};

struct smtp_rcpt_args {
    char addr[SMTP_PATH_MAX + 1];   /* "postmaster" when postmaster is set */
    bool postmaster;                /* the bare "<Postmaster>" (RFC 5321 4.1.1.3) */
    unsigned notify;                /* SMTP_NOTIFY_* bits, 0 when absent */
    char orcpt[SMTP_ORCPT_MAX + 1]; /* "addr-type;xtext" as received, "" when absent */
};

/*
 * Parse the argument of MAIL ("FROM:<a@b> SIZE=10 ...") or RCPT
 * ("TO:<a@b> NOTIFY=..."). smtputf8_ok says whether SMTPUTF8 is offered;
 * for RCPT, utf8 says whether the transaction's MAIL carried SMTPUTF8.
 * Returns 0, or ERR_INVAL / ERR_PROTO with *why set to a full reply
 * ("501 5.1.7 Bad sender address syntax").
 */
int smtp_parse_mail(struct view arg, bool smtputf8_ok, struct smtp_mail_args *out,
                    const char **why);
int smtp_parse_rcpt(struct view arg, bool utf8, struct smtp_rcpt_args *out, const char **why);

/* Parse "BDAT <size> [LAST]". 0 or ERR_INVAL. */
int smtp_parse_bdat(struct view arg, uint64_t *size, bool *last);

/* Decode base64 (RFC 4648 4, padding required, no whitespace) into out.
 * Returns the decoded length, or ERR_INVAL / ERR_TOOBIG. out may not hold a
 * NUL terminator; the caller adds one if it wants. */
int smtp_base64_decode(const char *in, size_t n, unsigned char *out, size_t out_size);

/* ---- byte readers ------------------------------------------------------ */

enum smtp_bare_mode {
    SMTP_BARE_REJECT,    /* a bare CR or LF is a protocol error */
    SMTP_BARE_NORMALIZE, /* a bare CR or LF ends a line, as CRLF would */
};

/* How a line ended. */
enum smtp_eol { SMTP_EOL_CRLF, SMTP_EOL_LF, SMTP_EOL_CR };

/*
 * The line splitter shared by the command reader and the DATA reader. Bytes
 * go in through smtp_lines_feed(); a complete line comes out in line/len
 * (truncated to max octets, with overflow set) with the way it ended. A CR
 * is held back until the next byte shows whether an LF follows, so lines
 * split across reads come out the same as whole ones.
 */
struct smtp_lines {
    char *line; /* caller-provided storage of max bytes */
    size_t max;
    size_t len;
    bool overflow;   /* the line was longer than max; the rest was dropped */
    bool nul;        /* the line held a NUL */
    bool pending_cr; /* the last byte fed was a CR */
    bool stop_full;  /* stop consuming when line is full (no overflow): the
                        caller empties it (the DATA reader's folding) */
};

void smtp_lines_init(struct smtp_lines *l, char *storage, size_t max);
/* Forget the partial line (and a pending CR). */
void smtp_lines_reset(struct smtp_lines *l);

/*
 * Consume bytes from p[0..n) up to and including the end of one line.
 * Returns the number of bytes consumed; *eol is set and true is stored in
 * *complete when a line ended (its text is l->line[0..l->len), valid until
 * the next call). A bare CR is only known when the next byte arrives, so a
 * CR at the end of the input stays pending.
 */
size_t smtp_lines_feed(struct smtp_lines *l, const char *p, size_t n, bool *complete,
                       enum smtp_eol *eol);
/* Start the next line (after a complete one was handled). */
void smtp_lines_next(struct smtp_lines *l);

/* What went wrong in a message, in the order the reply checks them. */
enum {
    SMTP_DATA_BARE_LF = 1 << 0,
    SMTP_DATA_BARE_CR = 1 << 1,
    SMTP_DATA_NUL = 1 << 2,
    SMTP_DATA_LONG_LINE = 1 << 3,
    SMTP_DATA_TOO_BIG = 1 << 4,
    SMTP_DATA_NOMEM = 1 << 5,
    SMTP_DATA_HEADER_TOO_BIG = 1 << 6, /* set by the session (streaming) */
};

/*
 * The DATA/BDAT reader: turns the client's bytes into the stored message,
 * lines ending in CRLF, dot-stuffing removed (DATA only; RFC 5321 4.5.2).
 *
 * End of data (DATA only) is a line of exactly "." that ends in CRLF and
 * follows a line that ended in CRLF (or the DATA command, when that ended
 * in CRLF). Nothing else ends it: in normalize mode a "." line next to a
 * bare CR or LF is stored as the text "." (and relayed dot-stuffed), so no
 * later hop can read the stored message as two.
 *
 * In reject mode the first bare CR or LF stops the reader (smtp_data_feed
 * returns ERR_PROTO): its end is unknowable, so the caller answers 5xx and
 * closes the connection as Postfix does. NULs, over-long lines and a message
 * over max_size are recorded in flags; the reader goes on to the end of data
 * without storing more, so the session can answer and continue.
 *
 * Long lines: with fold set (by the caller after smtp_data_init()), a line
 * longer than SMTP_TEXT_LINE_MAX octets (after dot-unstuffing) is stored
 * folded instead of being refused: CRLF SP is inserted, right after the
 * last space or tab that leaves a piece of at least half the limit, else at
 * the limit, so every stored line is at most 998 octets, every continuation
 * starts with SP (it can never be read as an end of data, an empty line, a
 * new header field or a MIME boundary), and deleting each inserted CRLF SP
 * gives back the line as the client sent it. The same in the header section
 * and the body, for DATA and BDAT alike (Postfix's smtp_line_length_limit
 * folds the same way on output; we fold once, at acceptance, so what is
 * queued, signed and sent is the same bytes).
 *
 * received counts the Received: fields of the header section (hop count,
 * RFC 5321 6.3).
 */
struct smtp_data {
    enum smtp_bare_mode mode;
    bool bdat;      /* BDAT chunks: no dot handling, no end-of-data line */
    bool prev_crlf; /* the previous line ended in CRLF */
    bool in_headers;
    bool seen_date;
    bool seen_msgid;
    bool done;       /* DATA: the end-of-data line was read */
    bool fold;       /* fold long lines (see above); false: flag SMTP_DATA_LONG_LINE */
    bool started;    /* the current line's start (dot, header) was handled */
    bool cont;       /* the current line has been folded at least once */
    size_t received; /* Received: fields in the header section */
    unsigned flags;
    uint64_t max_size;
    uint64_t size;     /* octets stored (or that would have been) */
    uint64_t head_len; /* the header section with its empty line, once read */
    size_t lines;
    struct buf *out; /* where the message goes */
    struct smtp_lines lr;
    char linebuf[SMTP_TEXT_LINE_MAX + 2];
};

/* Start reading a message into out (appended to). prev_crlf: did the DATA
 * command line end in CRLF? */
void smtp_data_init(struct smtp_data *d, enum smtp_bare_mode mode, bool bdat, uint64_t max_size,
                    bool prev_crlf, struct buf *out);
/*
 * Feed bytes. Returns the number consumed (for DATA, consumption stops just
 * after the end-of-data line, and d->done is set), or ERR_PROTO in reject
 * mode at a bare CR or LF.
 */
long smtp_data_feed(struct smtp_data *d, const char *p, size_t n);
/* BDAT LAST: finish the partial last line (a pending CR counts as bare).
 * 0 or ERR_PROTO (reject mode, bare CR). */
int smtp_data_finish(struct smtp_data *d);
/* The reply for a message with d->flags set, or NULL when it is clean. */
const char *smtp_data_reject_reply(const struct smtp_data *d);

#endif
