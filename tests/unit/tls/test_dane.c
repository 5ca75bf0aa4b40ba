/*
 * test_dane.c - TLSA matching (tls/dane.c) against certificates made for the
 * test by make-dane-certs.sh (a ctest fixture in DANE_CERT_DIR), whose
 * digests the openssl CLI computed: every usage x selector x matching type
 * combination, a changed byte never matches, unusable records (RFC 7672
 * 3.1.3, RFC 7671 4.1), digest agility (RFC 7671 9), DANE-EE ignoring names
 * and dates (RFC 7672 3.1.1), DANE-TA chains, names and dates (3.1.2,
 * 3.2.2), a TA key left out of the chain, and broken chains.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"
#include "tls.h"

#ifndef DANE_CERT_DIR
#error "DANE_CERT_DIR must name the directory make-dane-certs.sh fills"
#endif

/* A file of the fixture, whole; hex files are decoded. Kept for the run. */
struct blob {
    uint8_t *p;
    size_t n;
};

static struct blob load(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", DANE_CERT_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    struct blob b = {malloc(65536), 0};
    assert_non_null(b.p);
    b.n = fread(b.p, 1, 65536, f);
    fclose(f);
    assert_true(b.n > 0);
    return b;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static struct blob load_hex(const char *name)
{
    struct blob t = load(name), b = {malloc(t.n / 2 + 1), 0};
    for (size_t i = 0; i + 1 < t.n && hexval(t.p[i]) >= 0; i += 2)
        b.p[b.n++] = (uint8_t)(hexval(t.p[i]) << 4 | hexval(t.p[i + 1]));
    free(t.p);
    return b;
}

/* The data a TLSA record for certificate cert would carry. */
static struct blob record_data(const char *cert, uint8_t selector, uint8_t mtype)
{
    char name[128];
    const char *sel = selector == 0 ? "cert" : "spki";
    if (mtype == 0) {
        snprintf(name, sizeof(name), "%s.%s", cert, selector == 0 ? "der" : "spki");
        return load(name);
    }
    snprintf(name, sizeof(name), "%s.%s.%s", cert, sel, mtype == 1 ? "sha256" : "sha512");
    return load_hex(name);
}

/* A chain of fixture certificates by name. */
struct chain {
    struct tls_der c[4];
    struct blob b[4];
    size_t n;
};

static void chain_of(struct chain *ch, const char *a, const char *b, const char *c)
{
    const char *names[3] = {a, b, c};
    ch->n = 0;
    for (int i = 0; i < 3 && names[i]; i++) {
        char f[128];
        snprintf(f, sizeof(f), "%s.der", names[i]);
        ch->b[ch->n] = load(f);
        ch->c[ch->n].data = ch->b[ch->n].p;
        ch->c[ch->n].len = ch->b[ch->n].n;
        ch->n++;
    }
}

static void chain_free(struct chain *ch)
{
    for (size_t i = 0; i < ch->n; i++)
        free(ch->b[i].p);
}

static const char *const MX[] = {"mx.dane.test", "dane.test"};

/* Verify one record (usage, selector, mtype for certificate cert) against a
 * chain; flip: change the last data byte first. */
static enum tls_dane_status one(uint8_t usage, uint8_t selector, uint8_t mtype, const char *cert,
                                const struct chain *ch, bool flip, struct tls_dane_result *res)
{
    struct blob d = record_data(cert, selector, mtype);
    if (flip)
        d.p[d.n - 1] ^= 0x01;
    struct tls_tlsa r = {usage, selector, mtype, d.p, d.n};
    assert_true(tls_tlsa_usable(&r));
    int rc = tls_dane_verify(&r, 1, ch->c, ch->n, MX, 2, res);
    assert_int_equal(rc == 0, res->status == TLS_DANE_VERIFIED);
    free(d.p);
    return res->status;
}

/* ---- every combination ----------------------------------------------------- */

static void test_ee_all_combinations(void **state)
{
    (void)state;
    struct chain ch;
    chain_of(&ch, "leaf", "inter", "ta");
    struct tls_dane_result res;
    for (uint8_t sel = 0; sel <= 1; sel++)
        for (uint8_t mt = 0; mt <= 2; mt++) {
            assert_int_equal(one(3, sel, mt, "leaf", &ch, false, &res), TLS_DANE_VERIFIED);
            assert_int_equal(res.depth, 0);
            assert_int_equal(res.record, 0);
            assert_int_equal(res.selector, sel);
            assert_int_equal(res.mtype, mt);
            assert_int_equal(res.failure, TLS_FAIL_NONE);
            assert_non_null(strstr(res.text, "dane=verified 3"));
            /* One changed byte: no match. */
            assert_int_equal(one(3, sel, mt, "leaf", &ch, true, &res), TLS_DANE_NO_MATCH);
            assert_int_equal(res.failure, TLS_FAIL_VALIDATION);
            /* An EE record for the issuer does not match the leaf. */
            assert_int_equal(one(3, sel, mt, "inter", &ch, false, &res), TLS_DANE_NO_MATCH);
        }
    chain_free(&ch);
}

static void test_ta_all_combinations(void **state)
{
    (void)state;
    struct chain ch;
    chain_of(&ch, "leaf", "inter", "ta");
    struct tls_dane_result res;
    for (uint8_t sel = 0; sel <= 1; sel++)
        for (uint8_t mt = 0; mt <= 2; mt++) {
            /* The root as anchor, and the intermediate as anchor. */
            assert_int_equal(one(2, sel, mt, "ta", &ch, false, &res), TLS_DANE_VERIFIED);
            assert_int_equal(res.depth, 2);
            assert_int_equal(one(2, sel, mt, "inter", &ch, false, &res), TLS_DANE_VERIFIED);
            assert_int_equal(res.depth, 1);
            /* A changed full key (2 1 0) is still a key, taken as a TA
             * left out of the chain: it did not sign the chain. */
            assert_int_equal(one(2, sel, mt, "ta", &ch, true, &res),
                             sel == 1 && mt == 0 ? TLS_DANE_BAD_CHAIN : TLS_DANE_NO_MATCH);
        }
    chain_free(&ch);
}

/* ---- which records count --------------------------------------------------- */

static void test_usable(void **state)
{
    (void)state;
    uint8_t d32[32] = {1}, d64[64] = {1}, d31[31] = {1};
    struct tls_tlsa r[] = {
        {3, 1, 1, d32, 32}, /* 0 usable */
        {2, 0, 2, d64, 64}, /* 1 usable */
        {2, 1, 0, d31, 31}, /* 2 usable: Full(0) has any length */
        {0, 1, 1, d32, 32}, /* PKIX-TA: unusable for SMTP (RFC 7672 3.1.3) */
        {1, 1, 1, d32, 32}, /* PKIX-EE: unusable */
        {3, 2, 1, d32, 32}, /* unknown selector */
        {3, 1, 3, d32, 32}, /* unknown matching type */
        {3, 1, 1, d31, 31}, /* SHA2-256 of the wrong length */
        {3, 1, 2, d32, 32}, /* SHA2-512 of the wrong length */
        {3, 1, 0, d32, 0},  /* empty */
        {255, 255, 255, d32, 0},
    };
    size_t n = sizeof(r) / sizeof(r[0]);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(tls_tlsa_usable(&r[i]), i <= 2);
    assert_int_equal(tls_dane_usable_count(r, n), 3);
    assert_int_equal(tls_dane_usable_count(r + 3, n - 3), 0);

    /* No usable record: the caller's "TLS without authentication" case. */
    struct chain ch;
    chain_of(&ch, "leaf", NULL, NULL);
    struct tls_dane_result res;
    assert_int_equal(tls_dane_verify(r + 3, n - 3, ch.c, ch.n, MX, 2, &res), ERR_TLS);
    assert_int_equal(res.status, TLS_DANE_NO_USABLE);
    /* PKIX-EE with the right digest is still not used. */
    struct blob d = record_data("leaf", 1, 1);
    struct tls_tlsa pk = {1, 1, 1, d.p, d.n};
    assert_false(tls_tlsa_usable(&pk));
    assert_int_equal(tls_dane_verify(&pk, 1, ch.c, ch.n, MX, 2, &res), ERR_TLS);
    assert_int_equal(res.status, TLS_DANE_NO_USABLE);
    /* No certificate at all. */
    struct tls_tlsa ok = {3, 1, 1, d.p, d.n};
    assert_int_equal(tls_dane_verify(&ok, 1, ch.c, 0, MX, 2, &res), ERR_TLS);
    assert_int_equal(res.status, TLS_DANE_NO_CERT);
    free(d.p);
    chain_free(&ch);
    assert_string_equal(tls_dane_status_name(TLS_DANE_NAME), "name-mismatch");
}

/* RFC 7671 9: the strongest digest published for a usage and selector is
 * the only one used; other usages/selectors and Full(0) are unaffected. */
static void test_digest_agility(void **state)
{
    (void)state;
    struct chain ch;
    chain_of(&ch, "leaf", "inter", "ta");
    struct blob s256 = record_data("leaf", 1, 1), s512 = record_data("leaf", 1, 2);
    struct blob full = record_data("leaf", 1, 0), c256 = record_data("leaf", 0, 1);
    uint8_t junk512[64];
    memset(junk512, 0x5A, sizeof(junk512));
    uint8_t junk256[32];
    memset(junk256, 0x5A, sizeof(junk256));
    struct tls_dane_result res;

    /* A right SHA2-256 beside a wrong SHA2-512: the 256 one is ignored. */
    struct tls_tlsa a[] = {{3, 1, 1, s256.p, s256.n}, {3, 1, 2, junk512, 64}};
    assert_int_equal(tls_dane_usable_count(a, 2), 1);
    assert_int_equal(tls_dane_verify(a, 2, ch.c, ch.n, MX, 2, &res), ERR_TLS);
    assert_int_equal(res.status, TLS_DANE_NO_MATCH);
    /* A wrong SHA2-256 beside a right SHA2-512: verified by the 512. */
    struct tls_tlsa b[] = {{3, 1, 1, junk256, 32}, {3, 1, 2, s512.p, s512.n}};
    assert_int_equal(tls_dane_verify(b, 2, ch.c, ch.n, MX, 2, &res), 0);
    assert_int_equal(res.record, 1);
    assert_int_equal(res.mtype, 2);
    /* The wrong 512 shadows only selector 1: a selector-0 SHA2-256 still
     * counts, and so does a Full(0) record. */
    struct tls_tlsa c[] = {{3, 1, 2, junk512, 64}, {3, 0, 1, c256.p, c256.n}};
    assert_int_equal(tls_dane_verify(c, 2, ch.c, ch.n, MX, 2, &res), 0);
    assert_int_equal(res.record, 1);
    struct tls_tlsa e[] = {{3, 1, 2, junk512, 64}, {3, 1, 0, full.p, full.n}};
    assert_int_equal(tls_dane_verify(e, 2, ch.c, ch.n, MX, 2, &res), 0);
    assert_int_equal(res.mtype, 0);
    /* A SHA2-512 record of the wrong length is unusable, so it shadows
     * nothing. */
    struct tls_tlsa f[] = {{3, 1, 1, s256.p, s256.n}, {3, 1, 2, junk512, 63}};
    assert_int_equal(tls_dane_verify(f, 2, ch.c, ch.n, MX, 2, &res), 0);
    free(s256.p);
    free(s512.p);
    free(full.p);
    free(c256.p);
    chain_free(&ch);
}

/* ---- DANE-EE: names and dates do not matter --------------------------------- */

static void test_ee_ignores_names_and_dates(void **state)
{
    (void)state;
    struct tls_dane_result res;
    struct chain ch;
    chain_of(&ch, "ee", NULL, NULL); /* self-signed, names unrelated.test */
    assert_int_equal(one(3, 1, 1, "ee", &ch, false, &res), TLS_DANE_VERIFIED);
    chain_free(&ch);
    chain_of(&ch, "eeold", NULL, NULL); /* expired in 2020 */
    assert_int_equal(one(3, 0, 2, "eeold", &ch, false, &res), TLS_DANE_VERIFIED);
    chain_free(&ch);
    chain_of(&ch, "wrongname", "ta", NULL);
    assert_int_equal(one(3, 1, 1, "wrongname", &ch, false, &res), TLS_DANE_VERIFIED);
    /* ... but under DANE-TA the same chain fails on the name. */
    assert_int_equal(one(2, 1, 1, "ta", &ch, false, &res), TLS_DANE_NAME);
    assert_int_equal(res.failure, TLS_FAIL_HOST_MISMATCH);
    chain_free(&ch);
}

/* ---- DANE-TA ------------------------------------------------------------------ */

static void test_ta_names_and_dates(void **state)
{
    (void)state;
    struct tls_dane_result res;
    struct chain ch;
    /* The leaf may name the domain instead of the MX host (RFC 7672
     * 3.2.2): the second reference name. */
    chain_of(&ch, "domain", "ta", NULL);
    assert_int_equal(one(2, 0, 1, "ta", &ch, false, &res), TLS_DANE_VERIFIED);
    static const char *const only_mx[] = {"mx.dane.test"};
    struct blob d = record_data("ta", 0, 1);
    struct tls_tlsa r = {2, 0, 1, d.p, d.n};
    assert_int_equal(tls_dane_verify(&r, 1, ch.c, ch.n, only_mx, 1, &res), ERR_TLS);
    assert_int_equal(res.status, TLS_DANE_NAME);
    chain_free(&ch);
    /* An expired leaf under a matching TA. */
    chain_of(&ch, "expired", "ta", NULL);
    assert_int_equal(one(2, 1, 2, "ta", &ch, false, &res), TLS_DANE_EXPIRED);
    assert_int_equal(res.failure, TLS_FAIL_CERT_EXPIRED);
    chain_free(&ch);
    /* The leaf directly under the TA. */
    chain_of(&ch, "direct", "ta", NULL);
    assert_int_equal(one(2, 1, 1, "ta", &ch, false, &res), TLS_DANE_VERIFIED);
    assert_int_equal(res.depth, 1);
    chain_free(&ch);
    free(d.p);
}

/* RFC 7672 3.1.2: a TA given by its full key (2 1 0) may be left out of the
 * chain; a digest of it cannot stand in for it. */
static void test_ta_not_sent(void **state)
{
    (void)state;
    struct tls_dane_result res;
    struct chain ch;
    chain_of(&ch, "leaf", "inter", NULL);
    assert_int_equal(one(2, 1, 0, "ta", &ch, false, &res), TLS_DANE_VERIFIED);
    assert_int_equal(res.depth, -1);
    assert_non_null(strstr(res.text, "trust anchor key"));
    assert_int_equal(one(2, 1, 1, "ta", &ch, false, &res), TLS_DANE_NO_MATCH);
    assert_int_equal(one(2, 0, 0, "ta", &ch, false, &res), TLS_DANE_NO_MATCH);
    /* Another CA's key did not sign the top of the chain. */
    assert_int_equal(one(2, 1, 0, "rogue", &ch, false, &res), TLS_DANE_BAD_CHAIN);
    chain_free(&ch);
    /* A leaf alone, signed by the intermediate: the TA key did not sign
     * it. */
    chain_of(&ch, "leaf", NULL, NULL);
    assert_int_equal(one(2, 1, 0, "ta", &ch, false, &res), TLS_DANE_BAD_CHAIN);
    chain_free(&ch);
}

static void test_ta_broken_chains(void **state)
{
    (void)state;
    struct tls_dane_result res;
    struct chain ch;
    /* The leaf is not signed by the certificate after it, although that
     * one carries the right issuer name: a forged intermediate. */
    chain_of(&ch, "leaf", "rogue", NULL);
    assert_int_equal(one(2, 1, 1, "rogue", &ch, false, &res), TLS_DANE_BAD_CHAIN);
    assert_int_equal(res.failure, TLS_FAIL_VALIDATION);
    chain_free(&ch);
    /* The intermediate is missing between the leaf and the TA. */
    chain_of(&ch, "leaf", "ta", NULL);
    assert_int_equal(one(2, 0, 1, "ta", &ch, false, &res), TLS_DANE_BAD_CHAIN);
    chain_free(&ch);
    /* A non-CA certificate as "issuer": the leaf of another chain. */
    chain_of(&ch, "leaf", "direct", NULL);
    assert_int_equal(one(2, 0, 1, "direct", &ch, false, &res), TLS_DANE_BAD_CHAIN);
    chain_free(&ch);
    /* Garbage in the chain. */
    chain_of(&ch, "leaf", "inter", NULL);
    uint8_t junk[40] = {0x30, 0x26};
    ch.c[1].data = junk;
    ch.c[1].len = sizeof(junk);
    assert_int_equal(one(2, 1, 1, "inter", &ch, false, &res), TLS_DANE_BAD_INPUT);
    /* Garbage as the leaf cannot match an EE record either. */
    ch.c[0] = ch.c[1];
    assert_int_equal(one(3, 1, 1, "leaf", &ch, false, &res), TLS_DANE_NO_MATCH);
    chain_free(&ch);
}

/* EE and TA records together: the EE match wins; a failing TA does not
 * hide a matching EE. */
static void test_mixed_rrset(void **state)
{
    (void)state;
    struct chain ch;
    chain_of(&ch, "wrongname", "ta", NULL);
    struct blob ta = record_data("ta", 1, 1), ee = record_data("wrongname", 1, 1);
    struct tls_tlsa r[] = {{2, 1, 1, ta.p, ta.n}, {3, 1, 1, ee.p, ee.n}};
    struct tls_dane_result res;
    assert_int_equal(tls_dane_verify(r, 2, ch.c, ch.n, MX, 2, &res), 0);
    assert_int_equal(res.usage, 3);
    assert_int_equal(res.record, 1);
    /* Without the EE record the TA's name failure is reported. */
    assert_int_equal(tls_dane_verify(r, 1, ch.c, ch.n, MX, 2, &res), ERR_TLS);
    assert_int_equal(res.status, TLS_DANE_NAME);
    assert_int_equal(res.record, 0);
    free(ta.p);
    free(ee.p);
    chain_free(&ch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ee_all_combinations),
        cmocka_unit_test(test_ta_all_combinations),
        cmocka_unit_test(test_usable),
        cmocka_unit_test(test_digest_agility),
        cmocka_unit_test(test_ee_ignores_names_and_dates),
        cmocka_unit_test(test_ta_names_and_dates),
        cmocka_unit_test(test_ta_not_sent),
        cmocka_unit_test(test_ta_broken_chains),
        cmocka_unit_test(test_mixed_rrset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
