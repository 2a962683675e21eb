#!/bin/sh
# crit from the CRIU 4.1.1 source tree (system python3 for python3-protobuf)
T=/work/criu-proto/build/criu-4.1.1
PYTHONPATH=$T/lib:$T/crit exec /usr/bin/python3 -c 'import sys; from crit.__main__ import main; sys.argv[0]="crit"; main()' "$@"
