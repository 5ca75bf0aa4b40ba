/*
 * server_data.c - the byte readers of the SMTP server: the line splitter
 * used for command lines, and the DATA/BDAT reader that turns the client's
 * bytes into the stored message.
 *
 * Standards: RFC 5321 2.3.8 (lines end in CRLF; bare CR and LF are not line
 * ends), 4.1.1.4 (DATA), 4.5.2 (dot transparency), 4.5.3.1.6 (text lines of
 * at most 1000 octets with CRLF); RFC 3030 2 (BDAT: octet counts, no dot
 * handling); RFC 5322 2.1.1 (998 characters per line).
 *
 * Invariants (the SMTP smuggling rules, CVE-2023-51764 and relatives):
 *  - The end of DATA is a "." line that ends in CRLF and follows a line
 *    ending in CRLF; nothing else ends it.
 *  - The stored message has only CRLF line ends: no bare CR, no bare LF, no
 *    NUL. In normalize mode a bare CR or LF becomes CRLF, and a lone "."
 *    line that did not end the data is stored as "." (a relay dot-stuffs it
 *    back to ".."), so the stored message reads the same to every next hop.
 *  - Memory: one line of at most 999 octets plus the output buffer, whose
 *    growth stops at max_size.
 */
#include "server_parse.h"

#include <string.h>

void smtp_lines_init(struct smtp_lines *l, char *storage, size_t max)
{
    l->line = storage;
    l->max = max;
    l->len = 0;
    l->overflow = false;
    l->nul = false;
    l->pending_cr = false;
    l->stop_full = false;
}

void smtp_lines_reset(struct smtp_lines *l)
{
    smtp_lines_next(l);
    l->pending_cr = false;
}

void smtp_lines_next(struct smtp_lines *l)
{
    l->len = 0;
    l->overflow = false;
    l->nul = false;
}

static void lines_keep(struct smtp_lines *l, const char *p, size_t n)
{
    if (memchr(p, '\0', n))
        l->nul = true;
    size_t room = l->max - l->len;
    if (n > room) {
        l->overflow = true;
        n = room;
    }
    memcpy(l->line + l->len, p, n);
    l->len += n;
}

size_t smtp_lines_feed(struct smtp_lines *l, const char *p, size_t n, bool *complete,
                       enum smtp_eol *eol)
{
    *complete = false;
    if (n == 0)
        return 0;
    if (l->pending_cr) {
        l->pending_cr = false;
        *complete = true;
        if (p[0] == '\n') {
            *eol = SMTP_EOL_CRLF;
            return 1;
        }
        /* The CR stood alone; the byte after it starts the next line. */
        *eol = SMTP_EOL_CR;
        return 0;
    }
    size_t i = 0;
    while (i < n) {
        /* Find the next CR or LF quickly; most bytes are neither. */
        const char *cr = memchr(p + i, '\r', n - i);
        const char *lf = memchr(p + i, '\n', (size_t)((cr ? cr : p + n) - (p + i)));
        const char *stop = lf ? lf : cr;
        size_t k = stop ? (size_t)(stop - (p + i)) : n - i;
        if (l->stop_full && k > l->max - l->len) {
            /* Take what fits and let the caller empty the line. */
            size_t room = l->max - l->len;
            lines_keep(l, p + i, room);
            return i + room;
        }
        if (!stop) {
            lines_keep(l, p + i, n - i);
            return n;
        }
        lines_keep(l, p + i, k);
        i += k;
        *complete = true;
        if (p[i] == '\n') {
            *eol = SMTP_EOL_LF;
            return i + 1;
        }
        /* A CR: look at the byte after it, if we have it. */
        if (i + 1 == n) {
            *complete = false;
            l->pending_cr = true;
            return n;
        }
        if (p[i + 1] == '\n') {
            *eol = SMTP_EOL_CRLF;
            return i + 2;
        }
        *eol = SMTP_EOL_CR;
        return i + 1;
    }
    return n;
}

void smtp_data_init(struct smtp_data *d, enum smtp_bare_mode mode, bool bdat, uint64_t max_size,
                    bool prev_crlf, struct buf *out)
{
    d->mode = mode;
    d->bdat = bdat;
    d->prev_crlf = prev_crlf;
    d->in_headers = true;
    d->seen_date = false;
    d->seen_msgid = false;
    d->done = false;
    d->fold = false;
    d->started = false;
    d->cont = false;
    d->received = 0;
    d->flags = 0;
    d->max_size = max_size;
    d->size = 0;
    d->head_len = 0;
    d->lines = 0;
    d->out = out;
    /* One more than the limit, so a dot-stuffed line of 998 characters
     * after its leading dot fits and a longer one shows as overflow. */
    smtp_lines_init(&d->lr, d->linebuf, SMTP_TEXT_LINE_MAX + 1);
}

static bool header_is(const char *p, size_t n, const char *name)
{
    size_t k = strlen(name);
    return n >= k && view_eq_ci((struct view){p, k}, name);
}

/* RFC 5322 3.6.7 (and the obsolete syntax of 4.5.6, which allows space
 * before the colon): is this the first line of a Received: field? */
static bool is_received(const char *p, size_t n)
{
    static const char name[] = "received";
    size_t k = sizeof(name) - 1;
    if (n <= k || !view_eq_ci((struct view){p, k}, name))
        return false;
    while (k < n && (p[k] == ' ' || p[k] == '\t'))
        k++;
    return k < n && p[k] == ':';
}

/* The start of a line (its first piece when it is folded): the header
 * section's facts. */
static void note_line_start(struct smtp_data *d, const char *t, size_t len)
{
    if (!d->in_headers)
        return;
    if (len == 0) {
        d->in_headers = false;
        d->head_len = d->size + 2; /* the empty line is stored next */
    } else if (header_is(t, len, "date:"))
        d->seen_date = true;
    else if (header_is(t, len, "message-id:"))
        d->seen_msgid = true;
    else if (is_received(t, len))
        d->received++;
}

/* Store len octets of text followed by a line end ("\r\n", or "\r\n " for a
 * fold), counting them against max_size. */
static void store(struct smtp_data *d, const char *t, size_t len, bool fold)
{
    size_t end = fold ? 3 : 2;
    d->size += len + end;
    if (d->size > d->max_size)
        d->flags |= SMTP_DATA_TOO_BIG;
    if (d->flags)
        return; /* the message will be refused: store nothing more */
    int rc = buf_append(d->out, t, len);
    if (rc == 0)
        rc = buf_append(d->out, "\r\n ", end);
    if (rc == ERR_TOOBIG)
        d->flags |= SMTP_DATA_TOO_BIG;
    else if (rc)
        d->flags |= SMTP_DATA_NOMEM;
}

/* Where to fold text of len octets into a first piece of at most room
 * octets: right after the last space or tab that leaves a piece of at least
 * room / 2 (so the fold keeps words, URLs and attribute values whole where
 * the text allows, and the work per octet stays bounded), else at room. */
static size_t fold_point(const char *t, size_t len, size_t room)
{
    size_t max = len < room ? len : room;
    for (size_t c = max; c > room / 2; c--)
        if (t[c - 1] == ' ' || t[c - 1] == '\t')
            return c;
    return max;
}

/* Fold pieces off t[0..len) while it is longer than the current output line
 * may be (998 octets; 997 after a continuation's SP). Returns how many
 * octets were stored. */
static size_t fold_pieces(struct smtp_data *d, const char *t, size_t len)
{
    size_t done = 0;
    for (;;) {
        size_t room = SMTP_TEXT_LINE_MAX - (d->cont ? 1 : 0);
        if (len - done <= room)
            return done;
        size_t cut = fold_point(t + done, len - done, room);
        store(d, t + done, cut, true);
        d->cont = true;
        done += cut;
    }
}

/* The line buffer is full in the middle of a line and folding is on: fold
 * what can be folded and keep the rest (at most 998 octets) for later. */
static void data_fold(struct smtp_data *d)
{
    char *t = d->lr.line;
    size_t len = d->lr.len;
    size_t skip = 0;
    if (d->lr.nul)
        d->flags |= SMTP_DATA_NUL; /* before a piece of it is stored */
    if (!d->started) {
        /* RFC 5321 4.5.2: the first piece carries the line's stuffed dot. */
        if (!d->bdat && len > 0 && t[0] == '.')
            skip = 1;
        note_line_start(d, t + skip, len - skip);
        d->started = true;
    }
    size_t used = skip + fold_pieces(d, t + skip, len - skip);
    memmove(t, t + used, len - used);
    d->lr.len = len - used;
}

/* One complete line of the message, without its line end. */
static void data_line(struct smtp_data *d, enum smtp_eol eol, bool terminated)
{
    const char *t = d->lr.line;
    size_t len = d->lr.len;
    bool crlf = terminated && eol == SMTP_EOL_CRLF;
    bool started = d->started;

    if (!d->bdat && !started) {
        if (len == 1 && t[0] == '.' && !d->lr.overflow) {
            if (crlf && d->prev_crlf) {
                d->done = true;
                return;
            }
            /* Not an end of data: keep the dot as text (see the header). */
        } else if (len > 0 && t[0] == '.') {
            t++;
            len--;
        }
    }
    d->prev_crlf = crlf;
    d->lines++;
    if (d->lr.nul)
        d->flags |= SMTP_DATA_NUL;
    if (!d->fold && (d->lr.overflow || len > SMTP_TEXT_LINE_MAX))
        d->flags |= SMTP_DATA_LONG_LINE;
    if (!started)
        note_line_start(d, t, len);
    if (d->fold) {
        size_t used = fold_pieces(d, t, len);
        t += used;
        len -= used;
    }
    d->started = false;
    d->cont = false;
    store(d, t, len, false);
}

long smtp_data_feed(struct smtp_data *d, const char *p, size_t n)
{
    size_t off = 0;
    d->lr.stop_full = d->fold;
    while (off < n && !d->done) {
        bool complete;
        enum smtp_eol eol;
        size_t used = smtp_lines_feed(&d->lr, p + off, n - off, &complete, &eol);
        off += used;
        if (!complete) {
            if (d->fold && off < n && d->lr.len == d->lr.max) {
                /* Full in mid-line: fold, then read on. */
                data_fold(d);
                continue;
            }
            break;
        }
        if (eol != SMTP_EOL_CRLF && d->mode == SMTP_BARE_REJECT) {
            d->flags |= eol == SMTP_EOL_LF ? SMTP_DATA_BARE_LF : SMTP_DATA_BARE_CR;
            return ERR_PROTO;
        }
        data_line(d, eol, true);
        smtp_lines_next(&d->lr);
    }
    return (long)off;
}

int smtp_data_finish(struct smtp_data *d)
{
    if (d->lr.pending_cr) {
        d->lr.pending_cr = false;
        if (d->mode == SMTP_BARE_REJECT) {
            d->flags |= SMTP_DATA_BARE_CR;
            return ERR_PROTO;
        }
        data_line(d, SMTP_EOL_CR, true);
        smtp_lines_next(&d->lr);
        return 0;
    }
    /* RFC 3030 leaves the last line's CRLF to the client; a message we
     * store always ends with one. */
    if (d->lr.len > 0 || d->lr.overflow || d->lr.nul) {
        data_line(d, SMTP_EOL_CRLF, true);
        smtp_lines_next(&d->lr);
    }
    return 0;
}

const char *smtp_data_reject_reply(const struct smtp_data *d)
{
    if (d->flags & SMTP_DATA_BARE_LF)
        return "521 5.5.2 Error: bare <LF> received (lines must end in <CR><LF>)";
    if (d->flags & SMTP_DATA_BARE_CR)
        return "521 5.5.2 Error: bare <CR> received (lines must end in <CR><LF>)";
    if (d->flags & SMTP_DATA_NOMEM)
        return "452 4.3.1 Insufficient system resources";
    if (d->flags & SMTP_DATA_TOO_BIG)
        return "552 5.3.4 Message size exceeds fixed limit";
    if (d->flags & SMTP_DATA_HEADER_TOO_BIG)
        return "552 5.3.4 Message header section exceeds fixed limit";
    if (d->flags & SMTP_DATA_NUL)
        return "554 5.6.0 Message contains NUL characters";
    if (d->flags & SMTP_DATA_LONG_LINE)
        return "554 5.6.0 Message has a line longer than 998 characters (RFC 5322 2.1.1)";
    return NULL;
}
