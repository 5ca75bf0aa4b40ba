/*
 * dkim_int.h - what the files of the dkim module share; private to dkim/.
 */
#ifndef CONVOY_DKIM_INT_H
#define CONVOY_DKIM_INT_H

#include "dkim.h"

/* The value of a field: everything after the colon, CRLF included. */
struct view dkim_field_value(const struct dkim_field *f);

/* A tag=value list (RFC 6376 3.2): calls fn for each tag with the name and
 * the value, both without surrounding FWS. ERR_INVAL when malformed
 * (no '=', an empty or invalid name, a duplicate tag). */
#define DKIM_MAX_TAGS 32
struct dkim_tag {
    struct view name;
    struct view value;
};
int dkim_tags_parse(struct view list, struct dkim_tag *tags, size_t max, size_t *n);
/* The value of tag name, or NULL. */
const struct dkim_tag *dkim_tag_get(const struct dkim_tag *tags, size_t n, const char *name);

/* The c= tag: header[/body], each "simple" or "relaxed"; an empty value
 * is simple/simple (RFC 6376 3.5). 0 or ERR_INVAL. */
int dkim_canon_parse(struct view v, enum dkim_canon *hc, enum dkim_canon *bc);

/* Sign a 32-octet SHA-256 digest: RSASSA-PKCS1-v1_5 (RFC 6376 3.3.1) or
 * PureEdDSA Ed25519 over the digest (RFC 8463 3). Base64 appended to out. */
int dkim_key_sign_digest(const struct dkim_key *k, const uint8_t digest[32], struct buf *out,
                         struct buf *why);

/* Verify sig over digest with a public key from a key record's p= (already
 * base64-decoded). 0 when it verifies, ERR_INVAL when it does not, ERR_PROTO
 * when the key is unusable (reason in why). */
int dkim_verify_digest(enum dkim_alg alg, const uint8_t *pub, size_t pub_len,
                       const uint8_t digest[32], const uint8_t *sig, size_t sig_len, char *why,
                       size_t why_size);

/* Base64 decoding that skips FWS (encoding: base64_encode() in base). */
int dkim_b64_decode(struct view in, uint8_t *out, size_t *out_len);

/* SHA-256 over the header fields named in h= (bottom-up per name, RFC 6376
 * 5.4.2) and the signature field sig with its b= value removed and no
 * trailing CRLF (3.7). */
int dkim_header_hash(enum dkim_canon c, const struct dkim_headers *h, struct view hlist,
                     struct view sig, uint8_t out[32]);

#endif
