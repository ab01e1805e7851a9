/* The hello appliance's whole userland: one static program. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *greeting = getenv("GREETING");
    char host[64] = "?";
    gethostname(host, sizeof host);
    printf("%s from %s (pid %d)\n", greeting ? greeting : "Hello", host, (int)getpid());
    for (int i = 1; i < argc; i++)
        printf("arg %d: %s\n", i, argv[i]);
    return argc > 1 && argv[1][0] == 'x' ? 3 : 0;
}
