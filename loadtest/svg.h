/*
 * svg.h — a small SVG writer for llmq-loadtest's charts: a document, text,
 * and line charts (axes with round ticks, a title, a legend, polylines).
 * Writes to a FILE as it goes; nothing is kept in memory but the chart's
 * geometry.  Strings are XML-escaped.
 */
#ifndef LLMQ_LT_SVG_H
#define LLMQ_LT_SVG_H

#include <stddef.h>
#include <stdio.h>

void svg_begin(FILE *f, int width, int height);
void svg_end(FILE *f);
/* anchor: "start", "middle" or "end"; size in px. */
void svg_text(FILE *f, double x, double y, double size, const char *anchor, const char *text);

/* A line chart in the box (x, y, w, h) of the document, data ranges
 * [x0, x1] × [y0, y1] (widened to round ticks by svg_chart_axes). */
typedef struct svg_chart {
    double x, y, w, h;           /* the outer box, px */
    double x0, x1, y0, y1;       /* data range */
    const char *title, *xlabel, *ylabel;
    int legend_left;             /* legend in the top-left corner (else top-right) */
    int n_series;                /* series drawn so far (legend rows) */
    double px0, py0, pw, ph;     /* the plot area inside the box, px (set by axes) */
} svg_chart;

/* Widen the ranges to round ticks and draw frame, grid, ticks and labels. */
void svg_chart_axes(FILE *f, svg_chart *c);
/* Draw n points (xs[i], ys[i]) as a polyline (step: as a staircase) and add
 * a legend entry.  Points outside the range are clamped. */
void svg_chart_series(FILE *f, svg_chart *c, const double *xs, const double *ys, size_t n, const char *color,
                      const char *label, int step);
/* A note in the plot area (e.g. "no data"). */
void svg_chart_note(FILE *f, const svg_chart *c, const char *text);

#endif
