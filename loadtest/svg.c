/* svg.c — a small SVG writer with line charts (see svg.h). */
#include "loadtest/svg.h"

#include <math.h>
#include <string.h>

#define FONT "font-family=\"Helvetica,Arial,sans-serif\""
#define N_TICKS 5

static void put_escaped(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

void svg_begin(FILE *f, int width, int height) {
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n"
            "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
            width, height, width, height, width, height);
}

void svg_end(FILE *f) { fputs("</svg>\n", f); }

void svg_text(FILE *f, double x, double y, double size, const char *anchor, const char *text) {
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"%.1f\" text-anchor=\"%s\" " FONT ">", x, y, size, anchor);
    put_escaped(f, text);
    fputs("</text>\n", f);
}

/* A round tick step (1, 2 or 5 × 10^k) for a range: about N_TICKS ticks. */
static double tick_step(double range) {
    if (!(range > 0)) return 1;
    double raw = range / N_TICKS, mag = pow(10, floor(log10(raw))), r = raw / mag;
    return (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag;
}

static void fmt_tick(char *buf, size_t cap, double v, double step) {
    if (fabs(v) < step * 1e-6) v = 0;
    if (step >= 1 || v == 0) snprintf(buf, cap, "%.0f", v);
    else snprintf(buf, cap, "%.*f", (int)ceil(-log10(step)), v);
}

static double px(const svg_chart *c, double v) {
    double t = c->x1 > c->x0 ? (v - c->x0) / (c->x1 - c->x0) : 0;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    return c->px0 + t * c->pw;
}

static double py(const svg_chart *c, double v) {
    double t = c->y1 > c->y0 ? (v - c->y0) / (c->y1 - c->y0) : 0;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    return c->py0 + c->ph - t * c->ph;
}

void svg_chart_axes(FILE *f, svg_chart *c) {
    if (!(c->x1 > c->x0)) c->x1 = c->x0 + 1;
    if (!(c->y1 > c->y0)) c->y1 = c->y0 + 1;
    double xs = tick_step(c->x1 - c->x0), ys = tick_step(c->y1 - c->y0);
    c->x0 = floor(c->x0 / xs) * xs;
    c->x1 = ceil(c->x1 / xs) * xs;
    c->y0 = floor(c->y0 / ys) * ys;
    c->y1 = ceil(c->y1 / ys) * ys;
    c->px0 = c->x + 64;
    c->py0 = c->y + 34;
    c->pw = c->w - 64 - 16;
    c->ph = c->h - 34 - 46;
    c->n_series = 0;

    svg_text(f, c->x + c->w / 2, c->y + 20, 15, "middle", c->title);
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n", c->px0,
            c->py0, c->pw, c->ph);
    char buf[32];
    for (double v = c->x0; v <= c->x1 + xs * 1e-9; v += xs) {
        double x = px(c, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", x, c->py0, x,
                c->py0 + c->ph);
        fmt_tick(buf, sizeof buf, v, xs);
        svg_text(f, x, c->py0 + c->ph + 15, 11, "middle", buf);
    }
    for (double v = c->y0; v <= c->y1 + ys * 1e-9; v += ys) {
        double y = py(c, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", c->px0, y,
                c->px0 + c->pw, y);
        fmt_tick(buf, sizeof buf, v, ys);
        svg_text(f, c->px0 - 6, y + 4, 11, "end", buf);
    }
    svg_text(f, c->px0 + c->pw / 2, c->py0 + c->ph + 34, 12, "middle", c->xlabel);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\" " FONT ">",
            c->x + 16, c->py0 + c->ph / 2);
    put_escaped(f, c->ylabel);
    fputs("</text>\n", f);
}

void svg_chart_series(FILE *f, svg_chart *c, const double *xs, const double *ys, size_t n, const char *color,
                      const char *label, int step) {
    if (n > 0) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" points=\"", color);
        for (size_t i = 0; i < n; i++) {
            if (step && i > 0) fprintf(f, "%.1f,%.1f ", px(c, xs[i]), py(c, ys[i - 1]));
            fprintf(f, "%.1f,%.1f ", px(c, xs[i]), py(c, ys[i]));
        }
        fputs("\"/>\n", f);
    }
    double lx = c->legend_left ? c->px0 + 12 : c->px0 + c->pw - 170, ly = c->py0 + 14 + 16.0 * c->n_series;
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"3\"/>\n", lx, ly - 4,
            lx + 18, ly - 4, color);
    svg_text(f, lx + 24, ly, 11, "start", label);
    c->n_series++;
}

void svg_chart_note(FILE *f, const svg_chart *c, const char *text) {
    svg_text(f, c->px0 + c->pw / 2, c->py0 + c->ph / 2, 13, "middle", text);
}
