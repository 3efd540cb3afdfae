#!/bin/bash
# usage: ab.sh A B PAIRS EVENTS BATCH [env...]; alternates A and B, sync + sleep between runs
A=$1; B=$2; N=$3; EV=$4; BATCH=$5; shift 5
for i in $(seq 1 $N); do
  for bin in $A $B; do
    sync; sleep 4
    r=$(env TMPDIR=/work/tmp "$@" $bin $EV $BATCH 2>&1 | grep -E "events/s|p50" | tr '\n' ' ')
    echo "$(basename $bin) $r"
  done
done
