/*
 * evil_module.c: the "provider" a less privileged user would like a setuid program to load.
 *
 * Its constructor runs as soon as the library is loaded, before any PKCS#11 call, and creates
 * the file named by EVIL_MARKER (with the loading process's privileges). tests/setuid.rs
 * checks that the file never appears when the shim runs in a setuid program.
 *
 * Build: cc -shared -fPIC tests/c/evil_module.c -o evil_module.so
 */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void evil(void)
{
    const char *marker = getenv("EVIL_MARKER");
    int fd;

    if (marker == NULL)
        return;
    fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        (void)write(fd, "loaded\n", 7);
        close(fd);
    }
}
