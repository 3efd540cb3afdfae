#!/bin/bash
# usage: abk.sh A B PAIRS EVENTS BATCH [env...]; like ab.sh, with BY_KIND=1 and the order kinds' lines
A=$1; B=$2; N=$3; EV=$4; BATCH=$5; shift 5
for i in $(seq 1 $N); do
  for bin in $A $B; do
    sync; sleep 4
    r=$(env TMPDIR=/work/tmp BY_KIND=1 "$@" $bin $EV $BATCH 2>&1 | grep -E "events/s|OrderRequested|OrderAccepted|OrderCancelled|Tick " | sed -E 's/ +/ /g' | tr '\n' '|')
    echo "$(basename $bin) $r"
  done
done
