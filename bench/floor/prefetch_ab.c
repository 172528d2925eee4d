/* A/B of software prefetch in the float32 Adam loop (the experiment behind the "N = 1e6"
 * note of bench/README.md): the _loops.h element math as a plain loop, the same loop in
 * 256-element blocks that prefetch every stream AHEAD elements ahead, and the probe.
 *
 *   gcc -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -mavx2 -DAHEAD=2048 \
 *       bench/floor/prefetch_ab.c -o /tmp/prefetch_ab -lm && /tmp/prefetch_ab 1000000
 *
 * Prints ns/element (median and min of 15 interleaved rounds) for N given on the command
 * line. On the dev VM the prefetching loop was 15-30% slower at 1e5, 1e6 and 1e7, so
 * _loops.h does not prefetch.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
#define BODY \
  float g = g_[i]; float p = p_[i]; \
  float m = b1*m_[i] + o1*g; float v = b2*v_[i] + o2*g*g; m_[i]=m; v_[i]=v; \
  p_[i] = p - ss*m/(sqrtf(v)+eps);
__attribute__((noinline)) void plain(float*restrict p_, const float*restrict g_, float*restrict m_, float*restrict v_, long n,
  float b1,float o1,float b2,float o2,float ss,float eps){ for(long i=0;i<n;i++){BODY} }
#ifndef AHEAD
#define AHEAD 1024
#endif
#define BLK 256
__attribute__((noinline)) void pf(float*restrict p_, const float*restrict g_, float*restrict m_, float*restrict v_, long n,
  float b1,float o1,float b2,float o2,float ss,float eps){
  for(long b0=0;b0<n;b0+=BLK){ long e=b0+BLK<n?b0+BLK:n;
    if (b0+AHEAD+BLK<=n) for(long k=b0+AHEAD;k<b0+AHEAD+BLK;k+=16){__builtin_prefetch(p_+k,1);__builtin_prefetch(g_+k,0);__builtin_prefetch(m_+k,1);__builtin_prefetch(v_+k,1);}
    for(long i=b0;i<e;i++){BODY} } }
__attribute__((noinline)) void probe(float*restrict p_, const float*restrict g_, float*restrict m_, float*restrict v_, long n){
  for(long i=0;i<n;i++){float g=g_[i]; m_[i]+=g; v_[i]+=g; p_[i]-=g;} }
int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return (x>y)-(x<y);}
int main(int argc,char**argv){ long n=argc>1?atol(argv[1]):1000000; int reps=(int)(2e8/n); if(reps<3)reps=3;
  float *p=aligned_alloc(64,n*4),*g=aligned_alloc(64,n*4),*m=aligned_alloc(64,n*4),*v=aligned_alloc(64,n*4);
  for(long i=0;i<n;i++){p[i]=1;g[i]=(i%7)*1e-3f;m[i]=0;v[i]=1e-3f;}
  double t[3][15];
  for(int r=0;r<15;r++){ double t0;
    t0=now(); for(int k=0;k<reps;k++) plain(p,g,m,v,n,.9f,.1f,.999f,.001f,1e-3f,1e-8f); t[0][r]=(now()-t0)/reps/n*1e9;
    t0=now(); for(int k=0;k<reps;k++) pf(p,g,m,v,n,.9f,.1f,.999f,.001f,1e-3f,1e-8f); t[1][r]=(now()-t0)/reps/n*1e9;
    t0=now(); for(int k=0;k<reps;k++) probe(p,g,m,v,n); t[2][r]=(now()-t0)/reps/n*1e9; }
  const char*names[3]={"plain","prefetch","probe"};
  for(int j=0;j<3;j++){qsort(t[j],15,sizeof(double),cmp); printf("n=%ld %-9s median %.3f min %.3f ns/elem\n",n,names[j],t[j][7],t[j][0]);}
  return p[3]==12345; }
