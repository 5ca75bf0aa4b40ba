/*
 * queue_int.h - private to queue/: the on-disk records and their codec, the
 * key layout, and queue ID encoding. Nothing outside queue/ (except the
 * queue's own tests and fuzz driver) includes this.
 *
 * Layout version 1 (QUEUE_LAYOUT_VERSION), named LMDB databases:
 *   meta   "layout"                          -> META record
 *   meta   "stage:" id[16]                   -> empty: the body of id is still
 *                                               arriving (queue_stage_*); the
 *                                               next read-write open removes
 *                                               its chunks
 *   msg    id[16]                            -> MSG record
 *   body   id[16] chunk#(u32 BE)             -> up to QUEUE_CHUNK raw bytes
 *   rcpt   id[16] index(u32 BE)              -> RCPT record
 *   sched  next_ms(u64 BE) id[16] index(u32) -> empty (QUEUED, DEFERRED, ACTIVE)
 *   lease  id[16] index(u32 BE)              -> empty (ACTIVE recipients)
 *
 * Record encoding: byte 0 is the record format version (QREC_VERSION), byte 1
 * the record type, then fixed fields in a fixed order: integers big-endian,
 * strings as a u32 length and bytes (at most QREC_STR_MAX, no NUL). A value
 * is decoded only if it is exactly as long as its fields; anything else is
 * ERR_CORRUPT. Decoded strings are views into the input bytes.
 *
 * RCPT records have two versions, both read: version 1 as above, and
 * version 2 (QREC_RCPT_VERSION, what is written) which appends the attempt
 * history: a u8 count (at most QREC_HIST_MAX) and that many results in the
 * RESULT field layout, oldest first; these are the results before `last`.
 * A version 1 record without history re-encodes as version 1, so a round
 * trip is byte-exact; it becomes version 2 when a history is added.
 *
 * MSG record flags (QUEUE_F_*) are a u32 whose unknown bits are kept as
 * they are: a flag added later (QUEUE_F_DELAY_WARNED 0x08,
 * QUEUE_F_TLS_OPTIONAL 0x10) needs no new
 * record version, and records written before it read with it clear.
 *
 * QREC_F_PREFIX (a MSG flag bit never shown to callers): body chunk 0 holds
 * header fields added at acceptance (of any length up to QUEUE_CHUNK) and
 * the client's message follows in chunks 1.., each QUEUE_CHUNK octets but
 * the last; size counts both. Without it (every record written by
 * queue_submit) chunks 0.. are all QUEUE_CHUNK octets but the last. The
 * body reads the same either way: prefix then message.
 */
#ifndef CONVOY_QUEUE_INT_H
#define CONVOY_QUEUE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "queue.h"

#define QUEUE_LAYOUT_VERSION 1u
#define QREC_VERSION 1u
#define QREC_STR_MAX 65536u
#define QREC_RCPT_VERSION 2u
/* Results kept before the last one (QUEUE_HISTORY_MAX in all). */
#define QREC_HIST_MAX (QUEUE_HISTORY_MAX - 1)
/* Reply text kept in a history entry, in bytes. */
#define QREC_HIST_TEXT_MAX 512u
/* MSG flag: chunk 0 is a prefix (see above). */
#define QREC_F_PREFIX 0x80000000u

enum qrec_type { QREC_META = 1, QREC_MSG = 2, QREC_RCPT = 3, QREC_RESULT = 4 };

struct qrec_meta {
    uint32_t layout;
    int64_t created_ms;
    uint64_t id_ms;  /* high-water mark of issued IDs: time part */
    uint32_t id_ctr; /* and counter part */
};

struct qrec_msg {
    int64_t arrival_ms;
    uint64_t size;
    uint32_t n_chunks;
    uint32_t n_rcpts;
    uint32_t n_open; /* recipients not yet DELIVERED or BOUNCED */
    uint8_t ret;
    uint32_t flags;
    struct view sender, client_name, client_addr, helo, auth_user, tls, envid;
};

struct qrec_result {
    int32_t code;
    int64_t when_ms;
    struct view dsn, text, mx, ip, tls, sts_mode, sts_id;
};

struct qrec_rcpt {
    uint8_t state;
    uint8_t notify;
    uint32_t attempts;
    int64_t next_ms;
    struct view addr, orcpt;
    bool has_result;
    struct qrec_result last;
    uint8_t version;  /* as decoded: 1 or 2; 0 (new) encodes as 2 */
    uint8_t n_hist;   /* earlier results, at most QREC_HIST_MAX */
    struct view hist; /* their encoded bytes (decoded and checked) */
};

/* Encoders append to out (ERR_TOOBIG/ERR_NOMEM from the buffer, ERR_INVAL
 * for a string over QREC_STR_MAX or containing NUL). */
int qrec_meta_encode(const struct qrec_meta *m, struct buf *out);
int qrec_msg_encode(const struct qrec_msg *m, struct buf *out);
int qrec_rcpt_encode(const struct qrec_rcpt *r, struct buf *out);
int qrec_result_encode(const struct qrec_result *r, struct buf *out);

/* Decoders: 0, ERR_CORRUPT (bad length, bad field, wrong type, unknown
 * record version). Views point into p. */
int qrec_meta_decode(const void *p, size_t n, struct qrec_meta *m);
int qrec_msg_decode(const void *p, size_t n, struct qrec_msg *m);
int qrec_rcpt_decode(const void *p, size_t n, struct qrec_rcpt *r);
int qrec_result_decode(const void *p, size_t n, struct qrec_result *r);

/* Entry i (0 = oldest) of r's history into out (views into r->hist).
 * ERR_INVAL past the end, ERR_CORRUPT. */
int qrec_hist_get(const struct qrec_rcpt *r, size_t i, struct qrec_result *out);
/* The history of r with add appended (the oldest dropped when full; add's
 * text cut to QREC_HIST_TEXT_MAX) into out; *n is its entry count. */
int qrec_hist_push(const struct qrec_rcpt *r, const struct qrec_result *add, struct buf *out,
                   uint8_t *n);

/* A view of a C string (NULL gives an empty view). */
struct view qrec_view(const char *s);

/* Queue IDs: 48-bit ms + 32-bit counter as 16 Crockford base32 chars. */
void qid_encode(uint64_t ms, uint32_t ctr, char out[QUEUE_ID_LEN + 1]);
int qid_decode(const char *s, size_t n, uint64_t *ms, uint32_t *ctr);

/* Key helpers. */
#define QKEY_RCPT_LEN (QUEUE_ID_LEN + 4)
#define QKEY_SCHED_LEN (8 + QUEUE_ID_LEN + 4)
/* META key prefix of an unfinished stage's marker (followed by its ID). */
#define QKEY_STAGE "stage:"
#define QKEY_STAGE_LEN (sizeof(QKEY_STAGE) - 1)
void qkey_put_u32(uint8_t *p, uint32_t v);
void qkey_put_u64(uint8_t *p, uint64_t v);
uint32_t qkey_get_u32(const uint8_t *p);
uint64_t qkey_get_u64(const uint8_t *p);

#endif
