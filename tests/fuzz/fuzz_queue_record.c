/*
 * fuzz_queue_record.c - libFuzzer driver for the queue's record decoder
 * (queue/record.c): every record type and queue IDs.
 *
 * Properties checked: no decoder crashes or reads out of bounds on any
 * input; a value that decodes re-encodes to exactly the same bytes (the
 * encoding is canonical, so nothing is lost or invented by a round trip).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "queue_int.h"

static void same_bytes(const struct buf *b, const uint8_t *data, size_t size)
{
    if (b->len != size || memcmp(b->data, data, size) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct buf b;
    buf_init(&b, 1u << 24);

    struct qrec_meta meta;
    if (qrec_meta_decode(data, size, &meta) == 0) {
        if (qrec_meta_encode(&meta, &b) != 0)
            abort();
        same_bytes(&b, data, size);
    }
    buf_reset(&b);

    struct qrec_msg msg;
    if (qrec_msg_decode(data, size, &msg) == 0) {
        if (qrec_msg_encode(&msg, &b) != 0)
            abort();
        same_bytes(&b, data, size);
    }
    buf_reset(&b);

    struct qrec_rcpt rcpt;
    if (qrec_rcpt_decode(data, size, &rcpt) == 0) {
        if (qrec_rcpt_encode(&rcpt, &b) != 0)
            abort();
        same_bytes(&b, data, size);
    }
    buf_reset(&b);

    struct qrec_result res;
    if (qrec_result_decode(data, size, &res) == 0) {
        if (qrec_result_encode(&res, &b) != 0)
            abort();
        same_bytes(&b, data, size);
    }
    buf_free(&b);

    uint64_t ms;
    uint32_t ctr;
    if (qid_decode((const char *)data, size, &ms, &ctr) == 0) {
        char id[QUEUE_ID_LEN + 1];
        qid_encode(ms, ctr, id);
        if (memcmp(id, data, QUEUE_ID_LEN) != 0)
            abort();
    }
    return 0;
}
