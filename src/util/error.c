/* vd_error: a class, an errno and a message, set only on failure (see STYLE.md). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vdisk/vdisk.h"

static char *vformat(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) {
        abort();  /* small internal allocation */
    }
    return s;
}

int vd_error_set(vd_error **errp, vd_error_class cls, int errnum, const char *fmt, ...)
{
    if (errnum <= 0) {
        errnum = EIO;
    }
    if (errp && !*errp) {
        vd_error *e = calloc(1, sizeof(*e));
        if (!e) {
            abort();
        }
        va_list ap;
        va_start(ap, fmt);
        e->msg = vformat(fmt, ap);
        va_end(ap);
        e->cls = cls;
        e->errnum = errnum;
        *errp = e;
    }
    return -errnum;
}

void vd_error_prepend(vd_error **errp, const char *fmt, ...)
{
    if (!errp || !*errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *prefix = vformat(fmt, ap);
    va_end(ap);
    char *msg = NULL;
    if (asprintf(&msg, "%s: %s", prefix, (*errp)->msg) < 0) {
        abort();
    }
    free(prefix);
    free((*errp)->msg);
    (*errp)->msg = msg;
}

void vd_error_free(vd_error *err)
{
    if (err) {
        free(err->msg);
        free(err);
    }
}

void vd_error_freep(vd_error **errp)
{
    if (errp) {
        vd_error_free(*errp);
        *errp = NULL;
    }
}

const char *vd_error_msg(const vd_error *err)
{
    return err ? err->msg : "unknown error";
}

void vd_error_propagate(vd_error **errp, vd_error *err)
{
    if (errp && !*errp) {
        *errp = err;
    } else {
        vd_error_free(err);
    }
}
