/*
 * file.c - read a whole file into a bounded buffer: the one loop for the
 * configuration, the TLS policy file and policy files given to convoyctl.
 */
#include <errno.h>

#include "base.h"

int file_read_stream(FILE *f, struct buf *out)
{
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (buf_append(out, chunk, n) != 0)
            return ERR_TOOBIG;
    return ferror(f) ? ERR_IO : 0;
}

int file_read_all(const char *path, struct buf *out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ERR_IO;
    int rc = file_read_stream(f, out);
    int e = errno;
    fclose(f);
    errno = e;
    return rc;
}
