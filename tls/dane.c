/*
 * dane.c - DANE TLSA matching for SMTP: which records are usable, and does a
 * presented certificate chain match them.
 *
 * Standards: RFC 6698 2.1 (TLSA fields), RFC 7671 (DANE operations: 4.1
 * unusable records, 5.1 DANE-EE, 5.2 DANE-TA, 9 digest agility), RFC 7672
 * (SMTP: 3.1.1 DANE-EE ignores names and dates, 3.1.2 DANE-TA and a TA left
 * out of the chain, 3.1.3 PKIX usages unusable, 3.2.2 reference names).
 * tls.h says what is implemented and what is not.
 *
 * Invariants: every input is borrowed and only read; every DER read is
 * bounded by the certificate's length; every signature is checked by
 * wolfSSL (wolfSSL_X509_verify), digests are wolfSSL's; nothing here keeps
 * state between calls.
 */
#include "tls.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/openssl/evp.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <wolfssl/wolfcrypt/sha512.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

/* Longest chain looked at; real chains have 2 to 4 certificates. */
#define MAX_CHAIN 10

/* ---- records --------------------------------------------------------------- */

static size_t digest_len(uint8_t mtype)
{
    switch (mtype) {
    case TLS_DANE_MT_SHA256:
        return WC_SHA256_DIGEST_SIZE;
    case TLS_DANE_MT_SHA512:
        return WC_SHA512_DIGEST_SIZE;
    default:
        return 0;
    }
}

bool tls_tlsa_usable(const struct tls_tlsa *r)
{
    /* RFC 7672 3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP. */
    if (r->usage != TLS_DANE_TA && r->usage != TLS_DANE_EE)
        return false;
    if (r->selector != TLS_DANE_SEL_CERT && r->selector != TLS_DANE_SEL_SPKI)
        return false;
    if (r->data == NULL || r->len == 0)
        return false;
    switch (r->mtype) {
    case TLS_DANE_MT_FULL:
        return true;
    case TLS_DANE_MT_SHA256:
    case TLS_DANE_MT_SHA512:
        /* RFC 7671 4.1: a digest of the wrong length cannot match; such a
         * record is unusable rather than an error. */
        return r->len == digest_len(r->mtype);
    default:
        return false;
    }
}

/* Digest strength in the client's preference order (RFC 7671 9). */
static int strength(uint8_t mtype)
{
    return mtype == TLS_DANE_MT_SHA512 ? 2 : mtype == TLS_DANE_MT_SHA256 ? 1 : 0;
}

/* RFC 7671 9: is record i used, or shadowed by a stronger digest published
 * for the same usage and selector? Full(0) is not a digest: always used. */
static bool in_force(const struct tls_tlsa *recs, size_t n, size_t i)
{
    const struct tls_tlsa *r = &recs[i];
    if (!tls_tlsa_usable(r))
        return false;
    if (r->mtype == TLS_DANE_MT_FULL)
        return true;
    for (size_t k = 0; k < n; k++) {
        const struct tls_tlsa *o = &recs[k];
        if (o->usage == r->usage && o->selector == r->selector && tls_tlsa_usable(o) &&
            strength(o->mtype) > strength(r->mtype))
            return false;
    }
    return true;
}

size_t tls_dane_usable_count(const struct tls_tlsa *recs, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (in_force(recs, n, i))
            c++;
    return c;
}

const char *tls_dane_status_name(enum tls_dane_status s)
{
    switch (s) {
    case TLS_DANE_VERIFIED:
        return "verified";
    case TLS_DANE_NO_USABLE:
        return "no-usable-record";
    case TLS_DANE_NO_CERT:
        return "no-certificate";
    case TLS_DANE_NO_MATCH:
        return "no-match";
    case TLS_DANE_BAD_CHAIN:
        return "bad-chain";
    case TLS_DANE_EXPIRED:
        return "expired";
    case TLS_DANE_NAME:
        return "name-mismatch";
    case TLS_DANE_BAD_INPUT:
        return "bad-certificate";
    }
    return "unknown";
}

/* ---- DER: the SubjectPublicKeyInfo of a certificate ---------------------- */

/* One DER TLV at [p, end): tag, and the content's bounds. Definite lengths
 * of at most 4 octets only (X.509 is DER). */
static bool der_tlv(const uint8_t *p, const uint8_t *end, uint8_t *tag, const uint8_t **content,
                    size_t *clen, const uint8_t **next)
{
    if (end - p < 2)
        return false;
    *tag = p[0];
    size_t len = p[1];
    const uint8_t *c = p + 2;
    if (len & 0x80) {
        size_t nb = len & 0x7F;
        if (nb == 0 || nb > 4 || (size_t)(end - c) < nb)
            return false;
        len = 0;
        for (size_t i = 0; i < nb; i++)
            len = (len << 8) | c[i];
        c += nb;
    }
    if ((size_t)(end - c) < len)
        return false;
    *content = c;
    *clen = len;
    *next = c + len;
    return true;
}

/*
 * The DER SubjectPublicKeyInfo inside a certificate, exactly as encoded there
 * (RFC 6698 2.1.1: selector 1 is the DER of that field). Certificate ::=
 * SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
 * signature, issuer, validity, subject, subjectPublicKeyInfo, ... } ... }
 * (RFC 5280 4.1).
 */
static bool cert_spki(const struct tls_der *cert, const uint8_t **spki, size_t *len)
{
    const uint8_t *end = cert->data + cert->len, *c, *next;
    size_t clen;
    uint8_t tag;
    if (!der_tlv(cert->data, end, &tag, &c, &clen, &next) || tag != 0x30)
        return false;
    if (!der_tlv(c, c + clen, &tag, &c, &clen, &next) || tag != 0x30)
        return false;
    const uint8_t *p = c, *tend = c + clen;
    /* version [0] EXPLICIT, optional */
    if (p < tend && *p == 0xA0) {
        if (!der_tlv(p, tend, &tag, &c, &clen, &next))
            return false;
        p = next;
    }
    /* serialNumber, signature, issuer, validity, subject */
    for (int i = 0; i < 5; i++) {
        if (!der_tlv(p, tend, &tag, &c, &clen, &next))
            return false;
        p = next;
    }
    if (!der_tlv(p, tend, &tag, &c, &clen, &next) || tag != 0x30)
        return false;
    *spki = p;
    *len = (size_t)(next - p);
    return true;
}

/* ---- matching --------------------------------------------------------------- */

/* Does one record match a certificate (RFC 6698 2.1.2, 2.1.3)? */
static bool record_matches(const struct tls_tlsa *r, const struct tls_der *cert)
{
    const uint8_t *sel = cert->data;
    size_t sel_len = cert->len;
    if (r->selector == TLS_DANE_SEL_SPKI && !cert_spki(cert, &sel, &sel_len))
        return false;
    uint8_t md[WC_SHA512_DIGEST_SIZE];
    switch (r->mtype) {
    case TLS_DANE_MT_FULL:
        return r->len == sel_len && memcmp(r->data, sel, sel_len) == 0;
    case TLS_DANE_MT_SHA256:
        if (wc_Sha256Hash(sel, (word32)sel_len, md) != 0)
            return false;
        return memcmp(md, r->data, WC_SHA256_DIGEST_SIZE) == 0;
    case TLS_DANE_MT_SHA512:
        if (wc_Sha512Hash(sel, (word32)sel_len, md) != 0)
            return false;
        return memcmp(md, r->data, WC_SHA512_DIGEST_SIZE) == 0;
    default:
        return false;
    }
}

static void set_result(struct tls_dane_result *out, enum tls_dane_status st, int record,
                       const struct tls_tlsa *r, int depth, const char *text)
{
    out->status = st;
    out->record = record;
    out->usage = r ? r->usage : 0;
    out->selector = r ? r->selector : 0;
    out->mtype = r ? r->mtype : 0;
    out->depth = depth;
    switch (st) {
    case TLS_DANE_VERIFIED:
        out->failure = TLS_FAIL_NONE;
        break;
    case TLS_DANE_NAME:
        out->failure = TLS_FAIL_HOST_MISMATCH;
        break;
    case TLS_DANE_EXPIRED:
        out->failure = TLS_FAIL_CERT_EXPIRED;
        break;
    default:
        out->failure = TLS_FAIL_VALIDATION;
        break;
    }
    str_copy(out->text, text, sizeof(out->text));
}

/* ---- DANE-TA: the chain below the anchor ----------------------------------- */

/* Is a certificate within its dates now? */
static bool in_dates(WOLFSSL_X509 *x)
{
    WOLFSSL_ASN1_TIME *nb = wolfSSL_X509_get_notBefore(x);
    WOLFSSL_ASN1_TIME *na = wolfSSL_X509_get_notAfter(x);
    /* cmp_current_time: -1 when the time is before now, 1 after, 0 on
     * error. */
    return nb && na && wolfSSL_X509_cmp_current_time(nb) < 0 &&
           wolfSSL_X509_cmp_current_time(na) > 0;
}

/* Does child carry a valid signature by key, and name issuer as its issuer
 * (issuer may be NULL for a TA given as a bare key)? */
static bool signed_by(WOLFSSL_X509 *child, WOLFSSL_X509 *issuer, WOLFSSL_EVP_PKEY *key)
{
    if (issuer != NULL) {
        if (wolfSSL_X509_NAME_cmp(wolfSSL_X509_get_issuer_name(child),
                                  wolfSSL_X509_get_subject_name(issuer)) != 0)
            return false;
        if (!wolfSSL_X509_get_isCA(issuer))
            return false;
    }
    return key != NULL && wolfSSL_X509_verify(child, key) == WOLFSSL_SUCCESS;
}

/* The DNS SANs of the leaf, or its CN when it has no DNS SAN at all (RFC
 * 6125 6.4.4), against the reference names. */
static bool leaf_names(WOLFSSL_X509 *x, const char *const *names, size_t n_names)
{
    bool match = false;
    size_t dns = 0;
    WOLFSSL_STACK *sans = wolfSSL_X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int count = sans != NULL ? wolfSSL_sk_GENERAL_NAME_num(sans) : 0;
    for (int i = 0; i < count; i++) {
        WOLFSSL_GENERAL_NAME *gn = wolfSSL_sk_GENERAL_NAME_value(sans, i);
        if (gn == NULL || gn->type != ASN_DNS_TYPE || gn->d.dNSName == NULL)
            continue;
        dns++;
        int len = wolfSSL_ASN1_STRING_length(gn->d.dNSName);
        const unsigned char *p = wolfSSL_ASN1_STRING_get0_data(gn->d.dNSName);
        char tmp[256];
        if (p == NULL || len <= 0 || (size_t)len >= sizeof(tmp) ||
            memchr(p, '\0', (size_t)len) != NULL)
            continue;
        memcpy(tmp, p, (size_t)len);
        tmp[len] = '\0';
        for (size_t k = 0; k < n_names; k++)
            if (tls_name_matches(tmp, names[k]))
                match = true;
    }
    if (sans != NULL)
        wolfSSL_sk_GENERAL_NAME_pop_free(sans, wolfSSL_GENERAL_NAME_free);
    if (dns == 0) {
        char cn[256];
        WOLFSSL_X509_NAME *subj = wolfSSL_X509_get_subject_name(x);
        int n = subj ? wolfSSL_X509_NAME_get_text_by_NID(subj, NID_commonName, cn, sizeof(cn)) : -1;
        if (n > 0 && (size_t)n < sizeof(cn) && strlen(cn) == (size_t)n)
            for (size_t k = 0; k < n_names; k++)
                if (tls_name_matches(cn, names[k]))
                    match = true;
    }
    return match;
}

/*
 * Verify the chain from the leaf (x[0]) up to the anchor: the certificate
 * x[top] (top < n), or, with top == n, a bare key ta_key that must have
 * signed x[n - 1]. Every certificate below the anchor must be in date.
 */
static enum tls_dane_status check_chain(WOLFSSL_X509 **x, size_t n, size_t top,
                                        WOLFSSL_EVP_PKEY *ta_key, const char **why)
{
    for (size_t i = 0; i < top; i++) {
        if (!in_dates(x[i])) {
            *why = "certificate expired or not yet valid";
            return TLS_DANE_EXPIRED;
        }
        bool ok;
        if (i + 1 < n) { /* the issuer was sent (top <= n) */
            WOLFSSL_EVP_PKEY *k = wolfSSL_X509_get_pubkey(x[i + 1]);
            ok = signed_by(x[i], x[i + 1], k);
            wolfSSL_EVP_PKEY_free(k);
        } else {
            ok = signed_by(x[i], NULL, ta_key);
        }
        if (!ok) {
            *why = "chain does not verify up to the trust anchor";
            return TLS_DANE_BAD_CHAIN;
        }
    }
    return TLS_DANE_VERIFIED;
}

int tls_dane_verify(const struct tls_tlsa *recs, size_t n_recs, const struct tls_der *chain,
                    size_t n_chain, const char *const *names, size_t n_names,
                    struct tls_dane_result *out)
{
    memset(out, 0, sizeof(*out));
    if (tls_dane_usable_count(recs, n_recs) == 0) {
        set_result(out, TLS_DANE_NO_USABLE, -1, NULL, -1, "dane: no usable TLSA record");
        return ERR_TLS;
    }
    if (n_chain == 0 || chain[0].data == NULL || chain[0].len == 0) {
        set_result(out, TLS_DANE_NO_CERT, -1, NULL, -1, "dane: the server sent no certificate");
        return ERR_TLS;
    }
    if (n_chain > MAX_CHAIN)
        n_chain = MAX_CHAIN;

    /* DANE-EE first (RFC 7672 3.1.1): the leaf alone. */
    for (size_t i = 0; i < n_recs; i++) {
        const struct tls_tlsa *r = &recs[i];
        if (r->usage == TLS_DANE_EE && in_force(recs, n_recs, i) && record_matches(r, &chain[0])) {
            set_result(out, TLS_DANE_VERIFIED, (int)i, r, 0, "dane=verified");
            snprintf(out->text, sizeof(out->text), "dane=verified %u %u %u (leaf)", r->usage,
                     r->selector, r->mtype);
            return 0;
        }
    }

    /* DANE-TA: parse the chain once. */
    WOLFSSL_X509 *x[MAX_CHAIN] = {0};
    int rc = ERR_TLS;
    bool any_ta = false;
    for (size_t i = 0; i < n_recs; i++)
        if (recs[i].usage == TLS_DANE_TA && in_force(recs, n_recs, i))
            any_ta = true;
    if (!any_ta) {
        set_result(out, TLS_DANE_NO_MATCH, -1, NULL, -1,
                   "dane: no TLSA record matches the server certificate");
        return ERR_TLS;
    }
    for (size_t i = 0; i < n_chain; i++) {
        const unsigned char *p = chain[i].data;
        x[i] = wolfSSL_d2i_X509(NULL, &p, (int)chain[i].len);
        if (x[i] == NULL) {
            set_result(out, TLS_DANE_BAD_INPUT, -1, NULL, (int)i,
                       "dane: a certificate of the chain does not parse");
            goto done;
        }
    }

    /* The first failure is kept to explain a final no. */
    enum tls_dane_status worst = TLS_DANE_NO_MATCH;
    const char *worst_why = "no TLSA record matches the server certificate";
    int worst_rec = -1;
    for (size_t i = 0; i < n_recs; i++) {
        const struct tls_tlsa *r = &recs[i];
        if (r->usage != TLS_DANE_TA || !in_force(recs, n_recs, i))
            continue;
        /* A certificate of the chain as the anchor. The leaf itself may be
         * the anchor (a self-issued server certificate named by a TA
         * record); the name check still applies. */
        size_t top = n_chain;
        for (size_t d = 0; d < n_chain; d++)
            if (record_matches(r, &chain[d])) {
                top = d;
                break;
            }
        WOLFSSL_EVP_PKEY *ta_key = NULL;
        if (top == n_chain) {
            /* RFC 7672 3.1.2: a TA published as its full key (2 1 0) may be
             * left out of the chain; it must then have signed the topmost
             * certificate sent. */
            if (r->selector != TLS_DANE_SEL_SPKI || r->mtype != TLS_DANE_MT_FULL)
                continue;
            const unsigned char *kp = r->data;
            ta_key = wolfSSL_d2i_PUBKEY(NULL, &kp, (long)r->len);
            if (ta_key == NULL)
                continue;
        }
        const char *why = NULL;
        enum tls_dane_status st = check_chain(x, n_chain, top, ta_key, &why);
        wolfSSL_EVP_PKEY_free(ta_key);
        if (st == TLS_DANE_VERIFIED && !leaf_names(x[0], names, n_names)) {
            st = TLS_DANE_NAME;
            why = "the certificate does not name the MX host";
        }
        if (st == TLS_DANE_VERIFIED) {
            set_result(out, st, (int)i, r, top == n_chain ? -1 : (int)top, "dane=verified");
            snprintf(out->text, sizeof(out->text), "dane=verified %u %u %u (trust anchor %s%zu)",
                     r->usage, r->selector, r->mtype,
                     top == n_chain ? "key, above depth " : "depth ",
                     top == n_chain ? n_chain - 1 : top);
            rc = 0;
            goto done;
        }
        if (worst == TLS_DANE_NO_MATCH) {
            worst = st;
            worst_why = why;
            worst_rec = (int)i;
        }
    }
    set_result(out, worst, worst_rec, worst_rec >= 0 ? &recs[worst_rec] : NULL, -1, "");
    snprintf(out->text, sizeof(out->text), "dane: %s", worst_why);
done:
    for (size_t i = 0; i < n_chain; i++)
        wolfSSL_X509_free(x[i]);
    return rc;
}
