"""The dashboard's one stylesheet, served at ``/dashboard/style.css`` (no CDN, no build)."""

from __future__ import annotations

__all__ = ["STYLESHEET"]

# Text colours meet WCAG AA (>= 4.5:1) on their backgrounds; bars >= 3:1 on white.
STYLESHEET = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1a1a1a; background: #f4f5f7; }
header.top { background: #102a4c; color: #fff; padding: .75rem 1.5rem; display: flex;
             gap: 1rem; align-items: center; flex-wrap: wrap; }
header.top h1 { font-size: 1.25rem; margin: 0; flex: 1; }
header.top a, header.top .who { color: #fff; }
header.top form { margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 1.25rem 1.5rem 3rem; }
a { color: #0b4f9c; }
a:focus, button:focus, input:focus { outline: 3px solid #f0b400; outline-offset: 2px; }
button { font: inherit; padding: .4rem .9rem; border-radius: 4px; border: 1px solid #0b3d78;
         background: #0b4f9c; color: #fff; cursor: pointer; }
header.top button { background: transparent; border-color: #fff; }
.card { background: #fff; border: 1px solid #d5d9df; border-radius: 6px; padding: 1rem 1.25rem;
        margin: 0 0 1.25rem; overflow-x: auto; }
.signin { max-width: 420px; margin: 3rem auto; }
.signin label { display: block; font-weight: 600; margin-bottom: .25rem; }
.signin input { width: 100%; font: inherit; padding: .5rem; border: 1px solid #6b7280;
                border-radius: 4px; margin-bottom: 1rem; }
.error { color: #9b1c1c; background: #fdecec; border: 1px solid #e5a3a3; padding: .5rem .75rem;
         border-radius: 4px; }
.note { color: #4a4f57; font-size: .9rem; }
.scope { display: inline-block; padding: .15rem .6rem; border-radius: 999px; font-size: .85rem;
         font-weight: 600; }
.scope.shared { background: #e3f1e6; color: #1d5b2c; }
.scope.local { background: #fff4d6; color: #6b4a00; border: 1px solid #d9b44a; }
nav.periods a { margin-right: .75rem; }
nav.periods a[aria-current="page"] { font-weight: 700; color: #1a1a1a; text-decoration: none; }
.kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 1rem;
        margin: 0 0 1.25rem; }
.kpis div { background: #fff; border: 1px solid #d5d9df; border-radius: 6px; padding: .75rem 1rem; }
.kpis dt { color: #4a4f57; font-size: .9rem; }
.kpis dd { margin: 0; font-size: 1.6rem; font-weight: 700; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding-bottom: .4rem; }
th, td { padding: .4rem .6rem; border-bottom: 1px solid #e1e4e8; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eef1f5; }
th a { color: inherit; }
tbody th { white-space: nowrap; text-align: left; }
.chart { width: 100%; height: auto; max-height: 260px; }
.chart .tick, .chart .value { font-size: 12px; fill: #3b4048; }
.legend span { display: inline-block; width: .9rem; height: .9rem; vertical-align: middle;
               margin: 0 .3rem 0 .8rem; }
.legend .orig { background: #8fa9cc; } .legend .fwd { background: #1f4e8c; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 1.25rem;
         align-items: start; }
details summary { cursor: pointer; color: #0b4f9c; }
dl.policy { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 0; }
dl.policy dt { font-weight: 600; }
dl.policy dd { margin: 0; font-family: ui-monospace, monospace; }
"""
