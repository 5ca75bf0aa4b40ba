/*
 * dkim.h - DKIM signing and verification (RFC 6376) with rsa-sha256 and
 * ed25519-sha256 (RFC 8463), over wolfSSL. No I/O besides reading key files:
 * the caller looks up key records in DNS and hands their text in.
 *
 * Messages are whole RFC 5322 messages with CRLF line ends, as the queue
 * stores them. Nothing here keeps a pointer into a message after a call
 * returns.
 *
 * Threads: keys and key tables are immutable after loading and may be used
 * by several threads at once (each signature takes a private working copy of
 * the key from a pool inside the key). Everything else is per call.
 */
#ifndef CONVOY_DKIM_H
#define CONVOY_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

/* ---- header fields ------------------------------------------------------ */

/* One header field: its name (without the colon and the white space before
 * it; empty for a line without a colon) and all of its bytes, continuation
 * lines and the final CRLF included. Views into the message. */
struct dkim_field {
    struct view name;
    struct view raw;
};

/* The header section of a message. body_off is where the body starts (past
 * the empty line), or the message length when there is no empty line. */
struct dkim_headers {
    struct dkim_field *v;
    size_t n;
    size_t body_off;
};

/* Most header fields parsed; a message with more is not signed. */
#define DKIM_MAX_FIELDS 2000

/* Split the header section of msg into fields. A field starts at a line
 * that does not begin with SP or HTAB; the section ends at the first empty
 * line. 0, ERR_TOOBIG past DKIM_MAX_FIELDS, ERR_NOMEM. Free with
 * dkim_headers_free() (also after an error). */
int dkim_headers_parse(const char *msg, size_t len, struct dkim_headers *h);
void dkim_headers_free(struct dkim_headers *h);

/* The domain of the first address of the message's single From field,
 * lower-cased (ASCII only; a U-label stays as it is for the caller to
 * convert). Display names, comments and quoted local parts are skipped.
 * 0, ERR_NOTFOUND without a From field, ERR_INVAL for several From fields
 * or no address with a domain, ERR_TOOBIG when out is too small. */
int dkim_from_domain(const char *msg, const struct dkim_headers *h, char *out, size_t size);

/* ---- canonicalization (RFC 6376 3.4) ------------------------------------- */

enum dkim_canon { DKIM_CANON_SIMPLE, DKIM_CANON_RELAXED };

/* Append the canonical form of one whole header field (raw as in struct
 * dkim_field), with its CRLF. */
int dkim_canon_header(enum dkim_canon c, struct view field, struct buf *out);
/* Append the canonical form of a body. */
int dkim_canon_body(enum dkim_canon c, const char *body, size_t len, struct buf *out);
/* SHA-256 of the canonical body, of its first limit octets when limit >= 0
 * (the l= tag; *canon_len gets the canonical length when not NULL). */
int dkim_body_hash(enum dkim_canon c, const char *body, size_t len, int64_t limit, uint8_t out[32],
                   uint64_t *canon_len);

/*
 * The body hash piece by piece, for a body that is never whole in memory:
 * feeding any split of a body gives the hash and canonical length that
 * dkim_body_hash() gives for the whole (a CRLF split between two pieces,
 * trailing empty lines and, relaxed, trailing white space included). One
 * line not yet ended by CRLF is held. NULL from dkim_bh_new() when out of
 * memory; after dkim_bh_final() only dkim_bh_free() remains.
 */
struct dkim_bh;
struct dkim_bh *dkim_bh_new(enum dkim_canon c, int64_t limit);
int dkim_bh_feed(struct dkim_bh *b, const char *p, size_t n);
int dkim_bh_final(struct dkim_bh *b, uint8_t out[32], uint64_t *canon_len);
void dkim_bh_free(struct dkim_bh *b);

/* ---- keys ------------------------------------------------------------------ */

enum dkim_alg { DKIM_RSA_SHA256, DKIM_ED25519_SHA256 };

/* "rsa-sha256" or "ed25519-sha256". */
const char *dkim_alg_name(enum dkim_alg a);

/* Shortest RSA key accepted for signing and verifying (RFC 8301 3.2). */
#define DKIM_RSA_MIN_BITS 1024

struct dkim_key;

/* A private key from PEM: RSA (PKCS#8 "PRIVATE KEY" or traditional "RSA
 * PRIVATE KEY") of at least DKIM_RSA_MIN_BITS, or Ed25519 (PKCS#8). NULL with
 * one line (no newline) appended to err. */
struct dkim_key *dkim_key_from_pem(const char *pem, size_t len, struct buf *err);
/* The same from a file, which must be a regular file not readable by
 * group or others. Errors name the file. */
struct dkim_key *dkim_key_load(const char *path, struct buf *err);
/* A new key: RSA of bits (1024..8192) or Ed25519 (bits ignored). */
struct dkim_key *dkim_key_generate(enum dkim_alg alg, unsigned bits, struct buf *err);
void dkim_key_free(struct dkim_key *k);
enum dkim_alg dkim_key_alg(const struct dkim_key *k);
/* Modulus size of an RSA key, 256 for Ed25519. */
unsigned dkim_key_bits(const struct dkim_key *k);
/* Append the private key in PEM (traditional for RSA, PKCS#8 for Ed25519). */
int dkim_key_pem(const struct dkim_key *k, struct buf *out);
/* Append the key record's text: "v=DKIM1; k=rsa; p=BASE64" (RFC 6376 3.6.1;
 * RFC 8463 4: for Ed25519 p= is the raw 32-octet public key). */
int dkim_key_record(const struct dkim_key *k, struct buf *out);

/* ---- the key table (dkim_key_table) ---------------------------------------- */

/* Turns a domain as written in the key table into its lower-case A-label
 * form (the daemon passes an IDNA converter); 0 or an error. */
typedef int (*dkim_domain_fn)(const char *in, char *out, size_t size);

/* One line of the key table. */
struct dkim_signer {
    const char *domain; /* lower-case A-label */
    const char *selector;
    const char *keyfile;
    struct dkim_key *key;
};

struct dkim_keytable;

/* Load a key table: lines "DOMAIN SELECTOR KEYFILE", '#' comments, empty
 * lines ignored. Every key is loaded now. All or nothing: on any problem,
 * NULL with one line per problem ("FILE:LINE: why\n") appended to err.
 * to_alabel may be NULL (then a non-ASCII domain is an error). Reference
 * counted; the result has one reference. */
struct dkim_keytable *dkim_keytable_load(const char *path, dkim_domain_fn to_alabel,
                                         struct buf *err);
struct dkim_keytable *dkim_keytable_ref(struct dkim_keytable *t);
/* Drop one reference; the last frees the table and its keys. NULL is fine. */
void dkim_keytable_free(struct dkim_keytable *t);
size_t dkim_keytable_count(const struct dkim_keytable *t);
/* The lines for a domain (lower-case A-label), in file order: up to max
 * pointers stored in out, the number of matching lines returned. Valid as
 * long as the caller holds a reference to the table. */
size_t dkim_keytable_find(const struct dkim_keytable *t, const char *domain,
                          const struct dkim_signer **out, size_t max);

/* ---- signing ---------------------------------------------------------------- */

/* The header fields signed when dkim_signed_headers does not say otherwise. */
extern const char *const dkim_default_headers[];
extern const size_t dkim_n_default_headers;

struct dkim_sign_opts {
    const char *domain;   /* d= */
    const char *selector; /* s= */
    const struct dkim_key *key;
    /* Header field names to sign; NULL for dkim_default_headers. From is
     * signed in any case. Each name is signed as many times as it occurs;
     * From once more (over-signed: RFC 6376 8.15), so no From can be added
     * without breaking the signature. */
    const char *const *headers;
    size_t n_headers;
    int64_t t; /* signature time, seconds since the epoch */
    /* NULL: the body hash is computed from msg. Else the relaxed body hash
     * of a body that is not in msg (dkim_bh_*), and msg need hold only the
     * header section. */
    const uint8_t *body_hash;
};

/* Sign msg of len octets (its headers already parsed into h) with relaxed/relaxed
 * canonicalization and append one "DKIM-Signature: ...\r\n" field, folded
 * to lines of at most 78 octets, to out. 0 or an error with a reason
 * appended to why. */
int dkim_sign(const struct dkim_sign_opts *o, const char *msg, size_t len,
              const struct dkim_headers *h, struct buf *out, struct buf *why);

/* The b= value that key gives msg for the DKIM-Signature field sig (its
 * whole raw text; any b= value in it is ignored), whose c= and h= tags
 * decide what is hashed (RFC 6376 3.7). For tests against published
 * examples, and used by dkim_sign(). Base64 appended to out. */
int dkim_sign_field(const struct dkim_key *key, const char *msg, const struct dkim_headers *h,
                    struct view sig, struct buf *out, struct buf *why);

/* ---- verifying ----------------------------------------------------------- */

enum dkim_result {
    DKIM_PASS,
    DKIM_FAIL,      /* the signature or the body hash does not match */
    DKIM_PERMERROR, /* the signature or the key record cannot be used */
    DKIM_TEMPERROR, /* the key could not be fetched now */
};

const char *dkim_result_name(enum dkim_result r);

/* What one DKIM-Signature field says and how it fared. */
struct dkim_check {
    char domain[256];   /* d= */
    char selector[256]; /* s= */
    char alg[32];       /* a= */
    char query[600];    /* SELECTOR._domainkey.DOMAIN: the TXT name to look up; "" if unusable */
    enum dkim_result result;
    char reason[768];
};

/* Parse the signature in header field index fi of msg. On a malformed
 * signature, result is DKIM_PERMERROR with the reason and query is "";
 * otherwise the caller looks up query and calls dkim_check_verify(). */
void dkim_check_parse(const char *msg, const struct dkim_headers *h, size_t fi,
                      struct dkim_check *c);
/* Verify the signature in field fi with the key record txt (NULL when the
 * name does not exist or has no DKIM record) at time now. Sets result and
 * reason. */
void dkim_check_verify(const char *msg, size_t len, const struct dkim_headers *h, size_t fi,
                       const char *txt, int64_t now, struct dkim_check *c);

#endif
