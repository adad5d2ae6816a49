#!/bin/sh
# Renders every SRC/*.txt into OUT/<name>.html, and an index of the pages.
# Each run is counted in the step's cache mount, which persists from build to build.
set -eu
src=$1
out=$2
mkdir -p "$out"
echo run >> /var/cache/render/runs
for page in "$src"/*.txt; do
	name=$(basename "$page" .txt)
	{
		echo "<html><head><title>$name</title></head><body><pre>"
		cat "$page"
		echo "</pre><p>site version $SITE_VERSION</p></body></html>"
	} > "$out/$name.html"
	echo "<li><a href=\"$name.html\">$name</a></li>" >> "$out/list.part"
done
{ echo "<html><body><ul>"; cat "$out/list.part"; echo "</ul></body></html>"; } > "$out/index.html"
rm "$out/list.part"
