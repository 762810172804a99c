/* memo.c: placeholder */
#include "ctable.h"
int
fa_memo_init(PyObject *mod, fa_state *st)
{
    (void)mod;
    (void)st;
    return 0;
}
