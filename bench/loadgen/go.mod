module tierline/bench/loadgen

go 1.21
