. ./lib.sh
[ "$(add 2 3)" = 5 ] && echo PASS
