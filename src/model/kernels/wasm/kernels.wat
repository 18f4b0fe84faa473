;; Sparse decode kernels, f32x4 SIMD. Weights are rows of length d (d % 8 == 0), addressed by byte offsets.
(module
  (memory (export "memory") 1 65536)
  ;; out[i] = dot(W[rows[i]], x) for i < k
  (func (export "gather_matvec") (param $W i32) (param $rows i32) (param $k i32) (param $x i32) (param $d i32) (param $out i32)
    (local $i i32) (local $j i32) (local $wp i32) (local $a0 v128) (local $a1 v128) (local $n i32) (local $s v128)
    (local.set $n (i32.shl (local.get $d) (i32.const 2)))
    (block $done (loop $rows_loop
      (br_if $done (i32.ge_u (local.get $i) (local.get $k)))
      (local.set $wp (i32.add (local.get $W) (i32.mul (i32.load (i32.add (local.get $rows) (i32.shl (local.get $i) (i32.const 2)))) (local.get $n))))
      (local.set $a0 (f32x4.splat (f32.const 0)))
      (local.set $a1 (f32x4.splat (f32.const 0)))
      (local.set $j (i32.const 0))
      (loop $inner
        (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (v128.load (i32.add (local.get $wp) (local.get $j))) (v128.load (i32.add (local.get $x) (local.get $j))))))
        (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (v128.load offset=16 (i32.add (local.get $wp) (local.get $j))) (v128.load offset=16 (i32.add (local.get $x) (local.get $j))))))
        (local.set $j (i32.add (local.get $j) (i32.const 32)))
        (br_if $inner (i32.lt_u (local.get $j) (local.get $n))))
      (local.set $s (f32x4.add (local.get $a0) (local.get $a1)))
      (f32.store (i32.add (local.get $out) (i32.shl (local.get $i) (i32.const 2)))
        (f32.add (f32.add (f32x4.extract_lane 0 (local.get $s)) (f32x4.extract_lane 1 (local.get $s)))
                 (f32.add (f32x4.extract_lane 2 (local.get $s)) (f32x4.extract_lane 3 (local.get $s)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $rows_loop))))
  ;; out += sum_i a[i] * W[rows[i]] (rows with a[i] == 0 skipped)
  (func (export "gather_axpy") (param $W i32) (param $rows i32) (param $k i32) (param $a i32) (param $d i32) (param $out i32)
    (local $i i32) (local $j i32) (local $wp i32) (local $ai f32) (local $v v128) (local $n i32) (local $op i32)
    (local.set $n (i32.shl (local.get $d) (i32.const 2)))
    (block $done (loop $rows_loop
      (br_if $done (i32.ge_u (local.get $i) (local.get $k)))
      (local.set $ai (f32.load (i32.add (local.get $a) (i32.shl (local.get $i) (i32.const 2)))))
      (if (f32.ne (local.get $ai) (f32.const 0)) (then
        (local.set $wp (i32.add (local.get $W) (i32.mul (i32.load (i32.add (local.get $rows) (i32.shl (local.get $i) (i32.const 2)))) (local.get $n))))
        (local.set $v (f32x4.splat (local.get $ai)))
        (local.set $j (i32.const 0))
        (loop $inner
          (local.set $op (i32.add (local.get $out) (local.get $j)))
          (v128.store (local.get $op) (f32x4.add (v128.load (local.get $op)) (f32x4.mul (local.get $v) (v128.load (i32.add (local.get $wp) (local.get $j))))))
          (v128.store offset=16 (local.get $op) (f32x4.add (v128.load offset=16 (local.get $op)) (f32x4.mul (local.get $v) (v128.load offset=16 (i32.add (local.get $wp) (local.get $j))))))
          (local.set $j (i32.add (local.get $j) (i32.const 32)))
          (br_if $inner (i32.lt_u (local.get $j) (local.get $n))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $rows_loop))))
)
