/*
 * bench_dkim_sign.c - what one DKIM signature costs Convoy: dkim_sign() on a
 * 4 KiB message (header parse, relaxed body hash, header hash, signature),
 * on one thread, with an RSA-2048 and an Ed25519 key made for the run.
 *
 * usage: bench_dkim_sign [SECONDS_PER_KEY]   (default 3)
 * Prints per algorithm: signatures, CPU microseconds per signature (process
 * CPU time), and signatures per second of one core.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dkim.h"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? strtod(argv[1], NULL) : 3.0;
    struct buf msg;
    buf_init(&msg, 1 << 20);
    buf_append_str(&msg, "Received: from app.example ([127.0.0.1]) by relay.example\r\n"
                         "From: Sender <sender@example.com>\r\n"
                         "To: rcpt@example.net\r\n"
                         "Subject: benchmark message\r\n"
                         "Date: Sat, 05 Dec 2026 09:00:00 +0000\r\n"
                         "Message-ID: <bench.1@example.com>\r\n"
                         "MIME-Version: 1.0\r\n"
                         "Content-Type: text/plain; charset=us-ascii\r\n"
                         "\r\n");
    while (msg.len < 4096)
        buf_append_str(&msg, "The quick brown fox jumps over the lazy dog, again and again.\r\n");
    struct dkim_headers h;
    if (dkim_headers_parse(msg.data, msg.len, &h) != 0)
        return 1;
    enum dkim_alg algs[] = {DKIM_RSA_SHA256, DKIM_ED25519_SHA256};
    printf("| algorithm | signatures | CPU us per signature | signatures/s per core |\n");
    printf("| --- | ---: | ---: | ---: |\n");
    for (size_t a = 0; a < 2; a++) {
        struct buf err, out;
        buf_init(&err, 1024);
        buf_init(&out, 1 << 16);
        struct dkim_key *k = dkim_key_generate(algs[a], 2048, &err);
        if (!k) {
            fprintf(stderr, "keygen: %s\n", err.data);
            return 1;
        }
        struct dkim_sign_opts o = {
            .domain = "example.com", .selector = "bench", .key = k, .t = 1796461200};
        /* Warm up (the key's working copy is made on first use). */
        dkim_sign(&o, msg.data, msg.len, &h, &out, &err);
        long n = 0;
        double t0 = cpu_now(), t1;
        do {
            for (int i = 0; i < 20; i++) {
                buf_reset(&out);
                if (dkim_sign(&o, msg.data, msg.len, &h, &out, &err) != 0) {
                    fprintf(stderr, "sign: %s\n", err.data);
                    return 1;
                }
                n++;
            }
            t1 = cpu_now();
        } while (t1 - t0 < secs);
        double us = (t1 - t0) * 1e6 / (double)n;
        printf("| %s (%u bits) | %ld | %.1f | %.0f |\n", dkim_alg_name(algs[a]), dkim_key_bits(k),
               n, us, 1e6 / us);
        dkim_key_free(k);
        buf_free(&err);
        buf_free(&out);
    }
    dkim_headers_free(&h);
    buf_free(&msg);
    return 0;
}
