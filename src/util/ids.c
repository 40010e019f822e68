/* QEMU's rules for the names users give things (vdisk/vdisk.h). */
#include <string.h>

#include "vdisk/vdisk.h"

bool vd_id_wellformed(const char *id)
{
    if (!((*id >= 'a' && *id <= 'z') || (*id >= 'A' && *id <= 'Z'))) {
        return false;
    }
    return strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._") ==
           strlen(id);
}

bool vd_node_name_valid(const char *name)
{
    return vd_id_wellformed(name) && strlen(name) <= 31;
}
